"""Stage 5: the held-out measures, computed on an HF model folder (no trainer, no Ray).

All on the *test* split (documents never trained on) or on prompts built from it, with fixed seeds, so every model
is scored on exactly the same inputs. Higher is better unless the name ends in `loss` / `nll`.

- ntp_loss@L: mean next-token cross-entropy over windows of L tokens (L up to 4x the training length).
- short_loss@S: the same on the first S tokens of each test row (short-context sanity: no forgetting).
- nsp_em@L, nsp_tok@L, nsp_cos@L: the NSP objective itself. At a random position r in the second half of an L-token
  window, greedy k tokens from the prefix [0, r): exact match of all k tokens, fraction of matching tokens, and the
  mean cosine between the final-norm hidden states of the generated tokens and of the ground-truth tokens at the
  same positions (the cosine reward of refine.nsp.rewards, with greedy instead of sampled rollouts).
- recall@T: in-context recall. T-token sequences [filler][span][filler][span] of test text (span 24 tokens); the
  mean loss on the first occurrence of the span minus the mean loss on its second occurrence (nats/token, the
  span's first token excluded). 0 = no use of the earlier copy; the copies are T - 2*span - filler apart.
- niah@L, niah_nll@L: offline RULER NIAH (refine.eval.niah, niah_single_1: noise haystack, word key, number
  value) at L tokens: greedy string_match_all x100 (refine.eval.evaluate), and the teacher-forced mean NLL of the
  answer's tokens after the prompt (moves long before exact match does).
- qa_em, qa_nll: the held-out synthetic QA prompts (data/ruler_train/*_16_val): greedy answer scored by the
  RULER QA scorer (x100), and the teacher-forced answer NLL.
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


def nsp_measures(model, stream, sizes) -> dict:
    import torch
    import torch.nn.functional as F

    from refine.models.last_hidden import capture_last_hidden

    k = sizes.response_length
    out = {}
    rng = random.Random(12)
    for length in sizes.nsp_lengths:
        em, tok, cos = [], [], []
        for window in _windows(stream, length, sizes.nsp_positions, rng):
            r = rng.randrange(length // 2, length - k)
            ids = torch.tensor([window])
            generated = model.generate(input_ids=ids[:, :r], attention_mask=torch.ones_like(ids[:, :r]),
                                       max_new_tokens=k, min_new_tokens=k, do_sample=False,
                                       pad_token_id=0)[:, r:r + k]
            with capture_last_hidden(model) as seen:
                model(input_ids=ids[:, :r + k])
                model(input_ids=torch.cat([ids[:, :r], generated], dim=1))
            target_hidden, response_hidden = seen[0][0, r:r + k], seen[1][0, r:r + k]
            match = (generated[0] == ids[0, r:r + k]).float()
            em.append(match.prod().item())
            tok.append(match.mean().item())
            cos.append(F.cosine_similarity(response_hidden, target_hidden, dim=-1).mean().item())
        out[f"nsp_em@{length}"] = 100 * sum(em) / len(em)
        out[f"nsp_tok@{length}"] = 100 * sum(tok) / len(tok)
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
            s0, s1, s2 = (rng.randrange(0, len(stream) - max(gap, span)) for _ in range(3))
            piece = stream[s1:s1 + span]
            ids = torch.tensor([stream[s0:s0 + lead] + piece + stream[s2:s2 + gap] + piece])
            losses = _token_losses(model, ids)[0]  # losses[i] = NLL of token i + 1
            first = losses[lead:lead + span - 1].mean()  # tokens lead+1 .. lead+span-1
            second = losses[total - span:total - 1].mean()
            gains.append((first - second).item())
        out[f"recall@{total}"] = sum(gains) / len(gains)
    return out


def answer_nll(model, tokenizer, prompts, answers) -> float:
    """Mean over rows of the teacher-forced mean NLL of ' ' + answer's tokens after the prompt."""
    import torch

    values = []
    for prompt, answer in zip(prompts, answers):
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        a = tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
        losses = _token_losses(model, torch.tensor([p + a]))[0]
        values.append(losses[len(p) - 1:].mean().item())
    return sum(values) / len(values)


def niah_frames(tokenizer, sizes, cache: Path) -> dict:
    """The NIAH rows per length (built once per work dir with the study's tokenizer; fixed seed)."""
    import pandas as pd

    from refine.eval.niah import generate_niah

    frames = {}
    for length in sizes.niah_lengths:
        path = cache / f"niah_single_1_{length}.parquet"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            generate_niah(tokenizer, tasks=["niah_single_1"], num_samples=sizes.niah_samples, max_seq_length=length,
                          tokens_to_generate=12, seed=42).to_parquet(path, index=False)
        frames[length] = pd.read_parquet(path)
    return frames


def niah_measures(model, tokenizer, frames) -> dict:
    from refine.eval.evaluate import evaluate_frame

    out = {}
    for length, frame in frames.items():
        report, _ = evaluate_frame(model, tokenizer, frame, mode="all")
        out[f"niah@{length}"] = report["average"]
        out[f"niah_nll@{length}"] = answer_nll(model, tokenizer, list(frame.prompt), [next(iter(a)) for a in frame.answer])
    return out


def qa_measures(model, tokenizer, qa_file: Path, sizes) -> dict:
    import pandas as pd

    from refine.eval.evaluate import evaluate_frame

    frame = pd.read_parquet(qa_file)
    report, _ = evaluate_frame(model, tokenizer, frame, max_new_tokens=sizes.answer_tokens, mode="refine")
    return {"qa_em": report["average"],
            "qa_nll": answer_nll(model, tokenizer, list(frame.prompt), [next(iter(a)) for a in frame.answer])}


def evaluate_model(model_dir: Path, test_file: Path, qa_file: Path, sizes, niah_cache: Path,
                   parts=("lm", "qa")) -> dict:
    """Every measure of `parts` ("lm": ntp/short/nsp/recall/niah; "qa": qa_em/qa_nll; "qa_nll": qa_nll only) for one model folder."""
    import torch

    torch.manual_seed(0)
    model, tokenizer = load(model_dir)
    out = {}
    with torch.no_grad():
        if "lm" in parts:
            stream, rows = test_stream(tokenizer, test_file)
            out.update(ntp_measures(model, stream, rows, sizes))
            out.update(nsp_measures(model, stream, sizes))
            out.update(recall_measures(model, stream, sizes))
            out.update(niah_measures(model, tokenizer, niah_frames(tokenizer, sizes, niah_cache)))
        if "qa" in parts:
            out.update(qa_measures(model, tokenizer, qa_file, sizes))
        elif "qa_nll" in parts:  # post-trained models: their greedy EM is the trainer's own val_reward
            import pandas as pd

            frame = pd.read_parquet(qa_file)
            out["qa_nll"] = answer_nll(model, tokenizer, list(frame.prompt), [next(iter(a)) for a in frame.answer])
    return out
