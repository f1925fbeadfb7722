"""Greedy NIAH evaluation of an HF model: batched left-padded generation equals a plain per-prompt greedy loop,
and a model that answers with the needle value scores 100 on every task."""

import pytest
import torch

from refine.eval import evaluate, niah
from refine.scoring import ruler


@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=1, eos_token_id=2, pad_token_id=None, tie_word_embeddings=False)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def small_frame(tiny_tokenizer, haystack):
    return niah.generate_niah(tiny_tokenizer, tasks=["niah_single_1", "niah_single_2"], num_samples=2,
                              max_seq_length=256, tokens_to_generate=6, seed=3, haystack=haystack)


def _reference_greedy(model, tokenizer, prompt, steps):
    """One prompt, no padding, argmax of the full-sequence logits at each step, stop at EOS."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    new = []
    with torch.no_grad():
        for _ in range(steps):
            logits = model(torch.tensor([ids + new])).logits[0, -1]
            token = int(logits.argmax())
            if token == tokenizer.eos_token_id:
                break
            new.append(token)
    return tokenizer.decode(new, skip_special_tokens=True)


def test_batched_greedy_matches_a_per_prompt_loop(tiny_llama, tiny_tokenizer, small_frame):
    prompts = list(small_frame.prompt)
    # prompts of different lengths in one batch exercise the left padding
    assert len({len(tiny_tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts}) > 1
    batched = evaluate.greedy_generate(tiny_llama, tiny_tokenizer, prompts, max_new_tokens=6, batch_size=4)
    reference = [_reference_greedy(tiny_llama, tiny_tokenizer, p, 6) for p in prompts]
    assert batched == reference


def test_evaluate_frame_scores_each_task(tiny_llama, tiny_tokenizer, small_frame):
    report, predictions = evaluate.evaluate_frame(tiny_llama, tiny_tokenizer, small_frame, batch_size=2)
    assert set(report["tasks"]) == {"niah_single_1", "niah_single_2"}
    assert all(entry["n"] == 2 for entry in report["tasks"].values())
    expected = {}
    for task, prediction, answers in zip(small_frame.task, predictions, small_frame.answer):
        expected.setdefault(task, []).append(ruler.score(prediction, list(answers), mode="all"))
    for task, values in expected.items():
        assert report["tasks"][task]["score"] == round(100 * sum(values) / len(values), 2)


class _NeedleOracle(torch.nn.Module):
    """A stand-in model whose greedy output is the gold value(s) of the prompt it is given (for a 100 check)."""

    def __init__(self, tokenizer, frame):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.tokenizer = tokenizer
        self.answers = {tuple(tokenizer(p, add_special_tokens=False)["input_ids"]): list(a)
                        for p, a in zip(frame.prompt, frame.answer)}

    def generate(self, input_ids, attention_mask, max_new_tokens, **kwargs):
        rows = []
        for ids, mask in zip(input_ids, attention_mask):
            prompt = tuple(ids[mask.bool()].tolist())
            text = " " + ", ".join(self.answers[prompt]) + "."
            new = self.tokenizer(text, add_special_tokens=False)["input_ids"][:max_new_tokens]
            rows.append(ids.tolist() + new + [self.tokenizer.eos_token_id] * (max_new_tokens - len(new)))
        return torch.tensor(rows)


def test_a_model_that_returns_the_needle_scores_100(tiny_tokenizer, haystack):
    frame = niah.generate_niah(tiny_tokenizer, num_samples=1, max_seq_length=768, tokens_to_generate=96, seed=5,
                               haystack=haystack)
    report, predictions = evaluate.evaluate_frame(_NeedleOracle(tiny_tokenizer, frame), tiny_tokenizer, frame,
                                                  batch_size=3)
    assert {task: entry["score"] for task, entry in report["tasks"].items()} == {t: 100.0 for t in niah.NIAH_TASKS}
    assert report["average"] == 100.0


def test_bad_arguments(tiny_llama, tiny_tokenizer, small_frame):
    with pytest.raises(ValueError, match="max_new_tokens"):
        evaluate.greedy_generate(tiny_llama, tiny_tokenizer, ["x"], max_new_tokens=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        evaluate.evaluate_frame(tiny_llama, tiny_tokenizer, small_frame.drop(columns="max_answer_length"))
