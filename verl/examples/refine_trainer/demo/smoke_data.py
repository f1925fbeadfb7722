"""Tiny validation files for the demo scripts' `SMOKE=1` runs (CPU, tiny model), cut from the shipped files.

Writes into `--out`:
- `midtrain_val.parquet`: the first `--rows` documents of `data/demo/midtrain_val.parquet`;
- `ruler_val.parquet`: official RULER QA test rows (squadqa and hotpotqa) with only the documents that contain a gold
  answer kept (renumbered from 1), trimmed to sentences around the answer if still too long;
- `longbench_val.parquet`: official LongBench rows (hotpotqa and trec) with the middle of the context cut out.
Every prompt has at most `--max-prompt-length` tokens of `--tokenizer`; columns are those of the source files.
Plain script (not a package): the repo's top-level `verl/` folder only holds the demo scripts.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[4]
RULER_SOURCES = ("ruler_squadqa_lact_4096_200_test.parquet", "ruler_hotpotqa_lact_4096_200_test.parquet")
LONGBENCH_SOURCES = ("hotpotqa_16384.parquet", "trec_16384.parquet")
CUT = "\n...\n"


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def cut_middle(tokenizer, text: str, budget: int, head_fraction: float = 0.25) -> str:
    """`text` with its middle replaced by CUT so that it has at most `budget` tokens (the end, i.e. the question,
    is kept)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    keep = budget - n_tokens(tokenizer, CUT) - 2
    while True:
        if len(ids) <= budget:
            return text
        head = int(keep * head_fraction)
        short = tokenizer.decode(ids[:head]) + CUT + tokenizer.decode(ids[len(ids) - (keep - head) :])
        if n_tokens(tokenizer, short) <= budget:
            return short
        keep -= 4


def shorten_ruler(tokenizer, prompt: str, answers: list[str], budget: int) -> str:
    """A RULER QA prompt with only the documents holding a gold answer (else the first), then trimmed."""
    start, end = prompt.index("Document 1:\n"), prompt.rindex("\n\nAnswer the question")
    head, tail = prompt[:start], prompt[end:]
    docs = [d.strip() for d in re.split(r"(?:^|\n\n)Document \d+:\n", prompt[start:end]) if d.strip()]
    gold = [d for d in docs if any(a.lower() in d.lower() for a in answers)] or docs[:1]
    body = "".join(f"Document {i}:\n{d}\n\n" for i, d in enumerate(gold, 1)).rstrip("\n")
    short = head + body + tail
    if n_tokens(tokenizer, short) > budget:
        # Keep the sentences around the first answer mention of the first gold document.
        sentences = re.split(r"(?<=[.!?])\s+", gold[0])
        hit = next((i for i, s in enumerate(sentences) if any(a.lower() in s.lower() for a in answers)), 0)
        body = f"Document 1:\n{' '.join(sentences[max(0, hit - 1) : hit + 2])}"
        short = head + body + tail
    return cut_middle(tokenizer, short, budget, head_fraction=0.5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--tokenizer", default=str(REPO_ROOT / "data" / "demo" / "model"))
    parser.add_argument("--max-prompt-length", type=int, default=480)
    parser.add_argument("--rows", type=int, default=4, help="rows per file (2 validation batches of 2)")
    args = parser.parse_args(argv)
    if args.rows < 1 or args.rows % 2:
        parser.error(f"--rows must be a positive even number, got {args.rows}")
    from transformers import AutoTokenizer

    from transformers.utils import logging as hf_logging

    # only the tokenizer is read: without the model classes registered (heavy), transformers would warn that
    # config.json names a model type it does not know, which says nothing about the tokenizer
    hf_logging.set_verbosity_error()
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budget = args.max_prompt_length

    mid = pd.read_parquet(REPO_ROOT / "data" / "demo" / "midtrain_val.parquet").head(args.rows)
    mid.to_parquet(out / "midtrain_val.parquet", index=False)

    per_file = args.rows // 2
    ruler = pd.concat([pd.read_parquet(REPO_ROOT / "data" / "ruler" / f).head(per_file) for f in RULER_SOURCES])
    ruler["prompt"] = [shorten_ruler(tokenizer, p, list(a), budget) for p, a in zip(ruler["prompt"], ruler["answer"])]
    ruler["prompt_length"] = [n_tokens(tokenizer, p) for p in ruler["prompt"]]
    ruler["total_length"] = ruler["prompt_length"] + ruler["max_answer_length"]
    ruler.to_parquet(out / "ruler_val.parquet", index=False)

    longbench_dir = REPO_ROOT / "data" / "longbench"
    longbench = pd.concat([pd.read_parquet(longbench_dir / f).head(per_file) for f in LONGBENCH_SOURCES])
    longbench["prompt"] = [cut_middle(tokenizer, p, budget) for p in longbench["prompt"]]
    longbench["prompt_length"] = [n_tokens(tokenizer, p) for p in longbench["prompt"]]
    longbench["total_length"] = longbench["prompt_length"] + longbench["max_answer_length"]
    longbench.to_parquet(out / "longbench_val.parquet", index=False)
    print(f"smoke data -> {out} (prompts <= {budget} tokens, {args.rows} rows per file)")


if __name__ == "__main__":
    main()
