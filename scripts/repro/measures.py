"""Stage 5: the held-out measures, computed on an HF model folder (no trainer, no Ray).

All on the *test* split (documents never trained on) or on prompts built from it, with fixed seeds, so every model
is scored on exactly the same inputs. Higher is better unless the name ends in `loss` / `nll`.

- ntp_loss@L: mean next-token cross-entropy over windows of L tokens (L up to 4x the training length).
- short_loss@S: the same on the first S tokens of each test row (short-context sanity: no forgetting).
- nsp_em@L, nsp_cos@L: the NSP objective itself, scored by the method's own rewards (refine.nsp.rewards). At a
  random position r in the second half of an L-token window, the model continues the prefix [0, r) greedily for k
  tokens; nsp_em is the exact-match reward (share of the k tokens equal to the ground truth, x100) and nsp_cos the
  cosine reward (mean cosine between final-norm hidden states of the generated and the ground-truth tokens). The
  hidden states come from one fixed *judge*, the pre-trained checkpoint every arm starts from, so the cosine
  compares continuations, not models: a model's own hidden states are no yardstick across models (an untrained
  model's are nearly collinear whatever the token, so its own cosine is high).
- recall@T: in-context recall at distance. Two T-token sequences [lead][span][gap][span] and
  [lead][other][gap][span] of test text (span 24 tokens) that differ only in whether the final span was seen
  before; recall = mean loss on the final span without the earlier copy minus with it (nats/token, the span's first
  token excluded). Same tokens at the same positions, so context length does not count as recall; 0 = no use of
  the copy.
- niah_nll@L: offline RULER NIAH prompts (refine.eval.niah, niah_single_1: noise haystack, word key, number value)
  at L tokens, scored teacher-forced: the mean NLL of the answer's tokens after the prompt. (The share of answer
  digits predicted top-1 stayed at 0-1.6 % for every model, the copy-warmed one included, so it is not reported.)
- qa_tok, qa_nll: the held-out synthetic QA prompts (data/ruler_train/*_16_val), teacher-forced on the answer's
  tokens after the prompt: share of answer tokens that are the model's top prediction (x100), and their mean NLL.

Greedy exact match of whole NIAH / QA answers (RULER string match) and of all k NSP tokens at once were measured in
the first run of the study and were 0 for every model at this size, random or trained, so they cannot rank
anything here (docs/results.md); the token-level forms above are the ones a model of this size moves.
"""

from __future__ import annotations

import random
from pathlib import Path

LOWER_IS_BETTER = ("loss", "nll")


def lower_is_better(measure: str) -> bool:
    return measure.split("@")[0].endswith(LOWER_IS_BETTER)


def load(model_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import refine.models  # noqa: F401

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(model_dir)


def test_stream(tokenizer, test_file: Path) -> tuple[list[int], list[list[int]]]:
    """(all test rows as one token stream with EOS between rows, the rows' own token lists)."""
    import pandas as pd

    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in pd.read_parquet(test_file).text]
    stream = [tok for row in rows for tok in row + [tokenizer.eos_token_id]]
    return stream, rows


def _token_losses(model, ids):
    """Per-position NLL [B, S-1] of ids[:, 1:] given the prefix."""
    import torch.nn.functional as F

    logits = model(input_ids=ids).logits[:, :-1].float()
    return F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")


def _windows(stream, length, count, rng):
    starts = [rng.randrange(0, len(stream) - length) for _ in range(count)]
    return [stream[s:s + length] for s in starts]


def ntp_measures(model, stream, rows, sizes) -> dict:
    import torch

    out = {}
    rng = random.Random(11)
    for length in sizes.ntp_lengths:
        ids = torch.tensor(_windows(stream, length, sizes.ntp_windows, rng))
        out[f"ntp_loss@{length}"] = torch.cat([_token_losses(model, ids[i:i + 4]) for i in range(0, len(ids), 4)]).mean().item()
    short = [r[:sizes.short_len] for r in rows if len(r) >= sizes.short_len]
    ids = torch.tensor(short)
    out[f"short_loss@{sizes.short_len}"] = torch.cat([_token_losses(model, ids[i:i + 16]) for i in range(0, len(ids), 16)]).mean().item()
    return out


def nsp_measures(model, judge, stream, sizes) -> dict:
    import torch

    from refine.models.last_hidden import capture_last_hidden
    from refine.nsp.rewards import all_sequence_rewards

    k = sizes.response_length
    out = {}
    rng = random.Random(12)
    for length in sizes.nsp_lengths:
        em, cos = [], []
        for window in _windows(stream, length, sizes.nsp_positions, rng):
            r = rng.randrange(length // 2, length - k)
            ids = torch.tensor([window])
            generated = model.generate(input_ids=ids[:, :r], attention_mask=torch.ones_like(ids[:, :r]),
                                       max_new_tokens=k, min_new_tokens=k, do_sample=False,
                                       pad_token_id=0)[:, r:r + k]
            with capture_last_hidden(judge) as seen:  # ground truth and continuation as one batch of two rows
                judge(input_ids=torch.cat([ids[:, :r + k], torch.cat([ids[:, :r], generated], dim=1)]))
            hidden = seen[0][:, r:r + k]
            rewards = all_sequence_rewards(hidden[1:], hidden[:1], generated, ids[:, r:r + k])
            em.append(rewards["binary"].item())
            cos.append(rewards["cosine_similarity"].item())
        out[f"nsp_em@{length}"] = 100 * sum(em) / len(em)
        out[f"nsp_cos@{length}"] = sum(cos) / len(cos)
    return out


def recall_measures(model, stream, sizes) -> dict:
    import torch

    span = sizes.recall_span
    out = {}
    rng = random.Random(13)
    for total in sizes.recall_lengths:
        lead = span  # a short filler before the first copy, so both copies have some context
        gap = total - 2 * span - lead
        if gap <= 0:
            raise SystemExit(f"repro: recall length {total} is too short for span {span}")
        gains = []
        for _ in range(sizes.recall_samples):
            s0, s1, s2, s3 = (rng.randrange(0, len(stream) - max(gap, span)) for _ in range(4))
            piece, other = stream[s1:s1 + span], stream[s3:s3 + span]
            head, middle = stream[s0:s0 + lead], stream[s2:s2 + gap]
            ids = torch.tensor([head + piece + middle + piece, head + other + middle + piece])
            final_span = _token_losses(model, ids)[:, total - span:total - 1].mean(dim=1)  # tokens 2..span
            gains.append((final_span[1] - final_span[0]).item())
        out[f"recall@{total}"] = sum(gains) / len(gains)
    return out


def answer_scores(model, tokenizer, prompts, answers) -> tuple[float, float]:
    """Teacher-forced ' ' + answer after each prompt: (mean NLL, share of tokens predicted top-1 x100), averaged
    over rows."""
    import torch
    import torch.nn.functional as F

    nll, top1 = [], []
    for prompt, answer in zip(prompts, answers):
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        a = tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
        logits = model(input_ids=torch.tensor([p + a])).logits[0, len(p) - 1:-1].float()
        target = torch.tensor(a)
        nll.append(F.cross_entropy(logits, target).item())
        top1.append(100 * (logits.argmax(-1) == target).float().mean().item())
    return sum(nll) / len(nll), sum(top1) / len(top1)


def niah_frames(tokenizer, sizes, cache: Path) -> dict:
    """The NIAH rows per length (built once per work dir with the study's tokenizer; fixed seed)."""
    import pandas as pd

    from refine.eval.niah import generate_niah

    frames = {}
    for length in sizes.niah_lengths:
        path = cache / f"niah_single_1_{length}_{sizes.niah_samples}.parquet"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            generate_niah(tokenizer, tasks=["niah_single_1"], num_samples=sizes.niah_samples, max_seq_length=length,
                          tokens_to_generate=12, seed=42).to_parquet(path, index=False)
        frames[length] = pd.read_parquet(path)
    return frames


def niah_measures(model, tokenizer, frames) -> dict:
    out = {}
    for length, frame in frames.items():
        out[f"niah_nll@{length}"] = answer_scores(model, tokenizer, list(frame.prompt),
                                                  [next(iter(a)) for a in frame.answer])[0]
    return out


def qa_measures(model, tokenizer, qa_file: Path) -> dict:
    import pandas as pd

    frame = pd.read_parquet(qa_file)
    nll, top1 = answer_scores(model, tokenizer, list(frame.prompt), [next(iter(a)) for a in frame.answer])
    return {"qa_tok": top1, "qa_nll": nll}


def evaluate_model(model_dir: Path, test_file: Path, qa_file: Path, sizes, niah_cache: Path, judge_dir: Path,
                   parts=("lm", "qa")) -> dict:
    """Every measure of `parts` ("lm": ntp/short/nsp/recall/niah; "qa": qa_tok/qa_nll) for one model folder;
    `judge_dir` is the model whose hidden states score nsp_cos (the study's pre-trained checkpoint)."""
    import torch

    torch.manual_seed(0)
    model, tokenizer = load(model_dir)
    out = {}
    with torch.no_grad():
        if "lm" in parts:
            judge = model if Path(judge_dir).resolve() == Path(model_dir).resolve() else load(judge_dir)[0]
            stream, rows = test_stream(tokenizer, test_file)
            out.update(ntp_measures(model, stream, rows, sizes))
            out.update(nsp_measures(model, judge, stream, sizes))
            out.update(recall_measures(model, stream, sizes))
            out.update(niah_measures(model, tokenizer, niah_frames(tokenizer, sizes, niah_cache)))
        if "qa" in parts:
            out.update(qa_measures(model, tokenizer, qa_file))
    return out
