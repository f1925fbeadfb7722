"""Prepare mid-training data: keep the documents with at least N tokens, write train/val parquet files.

Input: SlimPajama-6B-style parquet files with a text column (other columns are kept). The official recipe keeps
training documents of at least 16K tokens (README) and leaves the validation documents unfiltered; its dataset-level
filter is broken (official-behaviour.md §4.1, Q8), so here the filter counts real tokens of the given tokenizer
(raw text, no special tokens, as the dataset tokenises prompts). Output: `train.parquet`, `val.parquet` (the input
columns plus `num_tokens`) and `summary.json` in --out-dir; the trainer reads the text column with
`data.prompt_key=text`.

Example:
    python scripts/prepare_midtrain_data.py --train-files 'slimpajama/train/*.parquet' \\
        --val-files 'slimpajama/validation/*.parquet' --tokenizer fla-hub/delta_net-1.3B-100B \\
        --min-tokens 16384 --max-val-docs 1000 --out-dir data/midtrain
"""

from __future__ import annotations

import argparse
import glob
import json
import statistics
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm


def expand(patterns: list[str], flag: str) -> list[Path]:
    """Files matching the glob patterns, sorted; ValueError naming the flag when a pattern matches nothing."""
    paths = []
    for pattern in patterns:
        matched = sorted(glob.glob(pattern))
        if not matched:
            raise ValueError(f"{flag}: no file matches {pattern!r}")
        paths += [Path(p) for p in matched]
    return paths


def token_counts(tokenizer, texts: list[str], min_tokens: int, byte_prefilter: bool) -> list[int]:
    """Token counts (no special tokens); with `byte_prefilter`, texts that cannot reach `min_tokens` get -1.

    The prefilter skips tokenising a text with fewer than `min_tokens - 1` UTF-8 bytes: byte-level BPE makes at most
    one token per byte, and SentencePiece (byte fallback) at most one per byte plus the leading "▁" piece.
    """
    counts = [-1] * len(texts)
    todo = [i for i, text in enumerate(texts) if not byte_prefilter or len(text.encode("utf-8")) + 1 >= min_tokens]
    if todo:
        encoded = tokenizer([texts[i] for i in todo], add_special_tokens=False)["input_ids"]
        for i, ids in zip(todo, encoded):
            counts[i] = len(ids)
    return counts


def filter_split(
    name: str,
    files: list[Path],
    out_path: Path,
    tokenizer,
    min_tokens: int,
    max_docs: int | None,
    text_column: str,
    batch_size: int,
    byte_prefilter: bool,
) -> dict:
    """Stream `files`, keep documents with at least `min_tokens` tokens (up to `max_docs`), write `out_path`."""
    total_rows = sum(pq.ParquetFile(path).metadata.num_rows for path in files)
    writer = None
    read = kept = 0
    kept_lengths: list[int] = []
    started = time.time()
    with tqdm(total=total_rows, desc=f"{name}: scanning", unit="doc", file=sys.stderr) as progress:
        for path in files:
            parquet = pq.ParquetFile(path)
            if text_column not in parquet.schema_arrow.names:
                raise ValueError(f"{path}: no column {text_column!r} (columns: {parquet.schema_arrow.names})")
            for batch in parquet.iter_batches(batch_size=batch_size):
                if max_docs is not None and kept >= max_docs:
                    break
                texts = [text or "" for text in batch.column(text_column).to_pylist()]
                counts = token_counts(tokenizer, texts, min_tokens, byte_prefilter)
                keep = [i for i, count in enumerate(counts) if count >= min_tokens]
                if max_docs is not None:
                    keep = keep[: max_docs - kept]
                read += batch.num_rows
                progress.update(batch.num_rows)
                if keep:
                    table = pa.Table.from_batches([batch]).take(keep)
                    table = table.append_column("num_tokens", pa.array([counts[i] for i in keep], pa.int64()))
                    if writer is None:
                        out_path.parent.mkdir(parents=True, exist_ok=True)
                        writer = pq.ParquetWriter(out_path, table.schema)
                    writer.write_table(table)
                    kept += len(keep)
                    kept_lengths += [counts[i] for i in keep]
                progress.set_postfix(kept=kept)
            if max_docs is not None and kept >= max_docs:
                break
    if writer is not None:
        writer.close()
    elif out_path.exists():
        out_path.unlink()  # no stale file from an earlier run
    return {
        "split": name,
        "files": [str(p) for p in files],
        "documents_read": read,
        "documents_kept": kept,
        "min_tokens": min_tokens,
        "tokens_kept": sum(kept_lengths),
        "tokens_min": min(kept_lengths, default=0),
        "tokens_median": statistics.median(kept_lengths) if kept_lengths else 0,
        "tokens_max": max(kept_lengths, default=0),
        "output": str(out_path) if kept else None,
        "seconds": round(time.time() - started, 2),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-files", nargs="+", required=True, help="parquet files or glob patterns")
    parser.add_argument("--val-files", nargs="+", default=None, help="parquet files or glob patterns (optional)")
    parser.add_argument("--tokenizer", required=True, help="HF tokenizer name or local directory")
    parser.add_argument("--min-tokens", type=int, default=16384, help="training documents need this many tokens")
    parser.add_argument("--val-min-tokens", type=int, default=0,
                        help="validation filter (default 0: unfiltered, as in the official recipe)")
    parser.add_argument("--max-train-docs", type=int, default=None)
    parser.add_argument("--max-val-docs", type=int, default=None)
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--batch-size", type=int, default=256, help="documents tokenised per call")
    parser.add_argument("--no-byte-prefilter", action="store_true",
                        help="tokenise every document (by default texts too short in UTF-8 bytes are skipped)")
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args(argv)
    for flag in ("min_tokens", "batch_size"):
        if getattr(args, flag) <= 0:
            parser.error(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    for flag in ("val_min_tokens", "max_train_docs", "max_val_docs"):
        value = getattr(args, flag)
        if value is not None and value < 0:
            parser.error(f"--{flag.replace('_', '-')} must be >= 0, got {value}")
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run the CLI; returns the summary (also printed and written to summary.json)."""
    args = parse_args(argv)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    out_dir = Path(args.out_dir)
    common = dict(tokenizer=tokenizer, text_column=args.text_column, batch_size=args.batch_size,
                  byte_prefilter=not args.no_byte_prefilter)  # fmt: skip
    splits = [
        filter_split("train", expand(args.train_files, "--train-files"), out_dir / "train.parquet",
                     min_tokens=args.min_tokens, max_docs=args.max_train_docs, **common)
    ]  # fmt: skip
    if args.val_files:
        splits.append(
            filter_split("val", expand(args.val_files, "--val-files"), out_dir / "val.parquet",
                         min_tokens=args.val_min_tokens, max_docs=args.max_val_docs, **common)
        )  # fmt: skip
    summary = {"tokenizer": args.tokenizer, "splits": splits}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{'split':<6} {'read':>9} {'kept':>9} {'tokens kept':>13} {'min':>8} {'median':>8} {'max':>8}  output")
    for s in splits:
        print(f"{s['split']:<6} {s['documents_read']:>9} {s['documents_kept']:>9} {s['tokens_kept']:>13} "
              f"{s['tokens_min']:>8} {s['tokens_median']:>8} {s['tokens_max']:>8}  {s['output']}")  # fmt: skip
    return summary


if __name__ == "__main__":
    main()
