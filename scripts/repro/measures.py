"""Stage 5: the held-out measures, computed on an HF model folder (no trainer, no Ray). Fixed before the run.

Primary (scripts/repro/kv.py's items, test split, held out): **greedy exact match of the retrieved value**. Each
item is one sequence ending in a query `$ K K`; the model's argmax must give both value digits (teacher forcing
the first digit is exact greedy decoding: if the first argmax is wrong the item is already 0). Per item 0/1,
grouped by the distance between the definition and the query (`Sizes.bins`); kept per item so the analysis can
pair items across arms (scripts/repro/stats.py). Chance: 1/100.

Secondary (test split text, no planted pairs):
- ntp_loss@T: next-token cross-entropy on T-token windows (T = 4L and 8L); short_loss@S on the first S tokens
  of each test row (no forgetting of short context).
- nsp_em, nsp_cos, nsp_cos_chance: the NSP objective scored by the method's own rewards. At a random position in
  the second half of a window the model continues greedily for k tokens; nsp_em = share of the k tokens equal to
  the ground truth (x100); nsp_cos = cosine between the judge's final-norm hidden states of the continuation and of
  the ground truth (the judge is the pre-trained checkpoint for every model, so the cosine compares continuations,
  not models); nsp_cos_chance = the same continuation against *another* sample's ground truth (the level a
  continuation unrelated to its prefix reaches: what nsp_cos must beat).
- hidden_cos: mean cosine between the model's *own* final-norm hidden states at random pairs of positions of test
  text: the collapse diagnostic (near 1 = the states no longer tell tokens apart; the trainer's cosine reward then
  rises without learning).
"""

from __future__ import annotations

import random
from pathlib import Path

LOWER_IS_BETTER = ("loss", "nll", "hidden_cos", "chance")


def lower_is_better(measure: str) -> bool:
    return measure.split("@")[0].endswith(LOWER_IS_BETTER)


def load(model_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import refine.models  # noqa: F401

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(model_dir)


def token_stream(tokenizer, file: Path) -> tuple[list[int], list[list[int]]]:
    """(all rows of a split as one token stream with EOS between rows, the rows' own token lists)."""
    import pandas as pd

    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in pd.read_parquet(file).text]
    return [tok for row in rows for tok in row + [tokenizer.eos_token_id]], rows


def kv_exact_match(model, items: list[dict], batch: int = 16) -> dict[str, str]:
    """Per distance bin, one character per item ('1' = both value digits are the model's argmax), in item order."""
    import torch

    out: dict[str, list[str]] = {}
    by_bin: dict[str, list[dict]] = {}
    for item in items:
        by_bin.setdefault(item["bin"], []).append(item)
    for name, group in by_bin.items():
        for i in range(0, len(group), batch):
            chunk = group[i:i + batch]
            ids = torch.tensor([it["ids"] + it["answer_ids"][:1] for it in chunk])
            guess = model(input_ids=ids).logits[:, -2:].argmax(-1)
            truth = torch.tensor([it["answer_ids"] for it in chunk])
            out.setdefault(name, []).extend("1" if ok else "0" for ok in (guess == truth).all(-1).tolist())
    return {name: "".join(bits) for name, bits in out.items()}


def _token_losses(model, ids):
    import torch.nn.functional as F

    logits = model(input_ids=ids).logits[:, :-1].float()
    return F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")


def _windows(stream, length, count, rng):
    return [stream[s:s + length] for s in (rng.randrange(0, len(stream) - length) for _ in range(count))]


def ntp_measures(model, stream, rows, sizes) -> dict:
    import torch

    out, rng = {}, random.Random(11)
    for length in sizes.ntp_lengths:
        ids = torch.tensor(_windows(stream, length, sizes.ntp_windows, rng))
        out[f"ntp_loss@{length}"] = torch.cat([_token_losses(model, ids[i:i + 4]) for i in range(0, len(ids), 4)]).mean().item()
    ids = torch.tensor([r[:sizes.short_len] for r in rows if len(r) >= sizes.short_len])
    out[f"short_loss@{sizes.short_len}"] = torch.cat([_token_losses(model, ids[i:i + 16]) for i in range(0, len(ids), 16)]).mean().item()
    return out


def nsp_measures(model, judge, stream, sizes) -> dict:
    import torch

    from refine.models.last_hidden import capture_last_hidden
    from refine.nsp.rewards import all_sequence_rewards, chance_cosine

    k, length, rng = sizes.response_length, sizes.nsp_len, random.Random(12)
    continuations, truths, em, cos = [], [], [], []
    for window in _windows(stream, length, sizes.nsp_positions, rng):
        r = rng.randrange(length // 2, length - k)
        ids = torch.tensor([window])
        generated = model.generate(input_ids=ids[:, :r], attention_mask=torch.ones_like(ids[:, :r]), max_new_tokens=k,
                                   min_new_tokens=k, do_sample=False, pad_token_id=0)[:, r:r + k]
        with capture_last_hidden(judge) as seen:  # ground truth and continuation as one batch of two rows
            judge(input_ids=torch.cat([ids[:, :r + k], torch.cat([ids[:, :r], generated], dim=1)]))
        hidden = seen[0][:, r:r + k]
        rewards = all_sequence_rewards(hidden[1:], hidden[:1], generated, ids[:, r:r + k])
        em.append(rewards["binary"].item())
        cos.append(rewards["cosine_similarity"].item())
        continuations.append(hidden[1])
        truths.append(hidden[0])
    n = len(truths)
    chance = chance_cosine(torch.stack(continuations), torch.stack(truths), torch.tensor([(i + 1) % n for i in range(n)]))
    return {f"nsp_em@{length}": 100 * sum(em) / n, f"nsp_cos@{length}": sum(cos) / n,
            f"nsp_cos_chance@{length}": chance.mean().item()}


def collapse_measure(model, stream, sizes) -> dict:
    import torch
    import torch.nn.functional as F

    from refine.models.last_hidden import capture_last_hidden

    rng = random.Random(14)
    ids = torch.tensor(_windows(stream, sizes.nsp_len, sizes.collapse_windows, rng))
    with capture_last_hidden(model) as seen:
        model(input_ids=ids)
    hidden = seen[0].reshape(-1, seen[0].shape[-1])
    a = torch.tensor([rng.randrange(len(hidden)) for _ in range(512)])
    b = torch.tensor([rng.randrange(len(hidden)) for _ in range(512)])
    return {"hidden_cos": F.cosine_similarity(hidden[a], hidden[b], dim=-1).mean().item()}


def evaluate_model(model_dir: Path, items: list[dict], test_file: Path | None, sizes, judge_dir: Path | None) -> dict:
    """{"em": {bin: bits}, "measures": {...}} for one model: the primary measure on `items`; with `test_file`, the
    secondary measures too (`judge_dir`: the model whose hidden states score nsp_cos)."""
    import torch

    torch.manual_seed(0)
    model, tokenizer = load(model_dir)
    out = {"measures": {}}
    with torch.no_grad():
        out["em"] = kv_exact_match(model, items)
        if test_file is not None:
            judge = model if Path(judge_dir).resolve() == Path(model_dir).resolve() else load(judge_dir)[0]
            stream, rows = token_stream(tokenizer, test_file)
            out["measures"].update(ntp_measures(model, stream, rows, sizes))
            out["measures"].update(nsp_measures(model, judge, stream, sizes))
            out["measures"].update(collapse_measure(model, stream, sizes))
    return out
