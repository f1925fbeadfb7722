"""Offline RULER-style NIAH: generate the data from the bundled corpus, and evaluate a checkpoint on it.

    # 1. data (sized in tokens of the checkpoint's tokenizer), one parquet per task, RULER layout
    python scripts/eval_niah.py generate --tokenizer /path/to/checkpoint --max-seq-length 4096 \\
        --num-samples 100 --seed 42 --out-dir data/niah
    # 2. greedy generation + RULER string_match_all, per task (x100) and the average
    python scripts/eval_niah.py evaluate --model /path/to/checkpoint --data data/niah/*_4096_100_test.parquet \\
        --batch-size 1 --device cuda --dtype bfloat16 --out results/niah_4096.json

`evaluate` loads the checkpoint through the HF Auto classes after `import refine.models` (fla DeltaNet /
GatedDeltaNet, LaCT). With no network at all, this is the NIAH path; `python -m refine.eval.harness` runs lm-eval's
own RULER tasks instead (they download their haystack).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def generate(args: argparse.Namespace) -> list[Path]:
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from refine.eval.niah import generate_niah, minimum_max_seq_length, write_niah_files

    # Only the tokenizer is read; without `import refine.models` (heavy) transformers would warn that config.json
    # names a model type it does not know, which says nothing about the tokenizer.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    finally:
        hf_logging.set_verbosity(verbosity)
    # too short for the prompts' fixed part: one line naming the minimum, before any row is drawn or written
    needed = minimum_max_seq_length(tokenizer, tasks=args.tasks, num_samples=args.num_samples,
                                    tokens_to_generate=args.tokens_to_generate, seed=args.seed,
                                    depth_percent=args.depth)
    if args.max_seq_length < needed:
        print(f"eval_niah.py generate: --max-seq-length {args.max_seq_length} is too short: these tasks' prompts "
              f"need at least {needed - args.tokens_to_generate} tokens of this tokenizer plus "
              f"--tokens-to-generate {args.tokens_to_generate}. Fix: use --max-seq-length {needed} or more",
              file=sys.stderr)
        sys.exit(2)
    frame = generate_niah(
        tokenizer, tasks=args.tasks, num_samples=args.num_samples, max_seq_length=args.max_seq_length,
        tokens_to_generate=args.tokens_to_generate, seed=args.seed, depth_percent=args.depth,
    )  # fmt: skip
    paths = write_niah_files(frame, args.out_dir)
    for path in paths:
        print(path)
    return paths


def evaluate(args: argparse.Namespace) -> dict:
    import pandas as pd
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import refine.models  # noqa: F401  registers our model classes with the Auto classes
    from refine.eval.evaluate import evaluate_frame, read_ruler_file
    from refine.scoring.report import format_report, write_report

    frame = pd.concat([read_ruler_file(path) for path in args.data], ignore_index=True)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype)).to(args.device).eval()
    # written row by row as they are answered: an interrupted evaluation resumes from this file
    predictions_out = args.predictions_out or (str(Path(args.out).with_suffix(".predictions.jsonl")) if args.out
                                               else "niah_predictions.jsonl")
    report, _ = evaluate_frame(
        model, tokenizer, frame, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, mode=args.mode,
        limit=args.limit, predictions_path=predictions_out,
    )  # fmt: skip
    report["model"] = args.model
    report["data"] = [str(p) for p in args.data]
    print(format_report(report))
    print(f"predictions: {predictions_out}")
    if args.out:
        write_report(report, args.out)
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from refine.scoring.ruler import MODES, NIAH_TASKS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="write NIAH parquet files (RULER layout)")
    gen.add_argument("--tokenizer", required=True, help="HF tokenizer name or directory (the model's own)")
    gen.add_argument("--tasks", nargs="+", default=list(NIAH_TASKS), choices=NIAH_TASKS)
    gen.add_argument("--num-samples", type=int, default=100)
    gen.add_argument("--max-seq-length", type=int, default=4096)
    gen.add_argument("--tokens-to-generate", type=int, default=128, help="RULER's NIAH budget: 128")
    gen.add_argument("--seed", type=int, default=42)
    gen.add_argument("--depth", type=float, default=None, help="needle depth in percent (default: RULER's random)")
    gen.add_argument("--out-dir", required=True)

    ev = commands.add_parser("evaluate", help="greedy generation + per-task RULER scores")
    ev.add_argument("--model", required=True, help="checkpoint directory (HF format)")
    ev.add_argument("--tokenizer", default=None, help="default: --model")
    ev.add_argument("--data", nargs="+", required=True, type=Path, help="RULER-layout parquet files")
    ev.add_argument("--batch-size", type=int, default=1)
    ev.add_argument("--max-new-tokens", type=int, default=None, help="default: the files' max_answer_length")
    ev.add_argument("--mode", default="all", choices=MODES, help="ruler.score mode (NIAH: all)")
    ev.add_argument("--limit", type=int, default=None, help="first N rows per task")
    ev.add_argument("--device", default="cuda" if _cuda() else "cpu")
    ev.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ev.add_argument("--out", default=None, help="report JSON path")
    ev.add_argument("--predictions-out", default=None,
                    help="per-row predictions (JSON lines, appended as answered; an existing file is resumed; "
                         "default: next to --out, else ./niah_predictions.jsonl)")
    return parser.parse_args(argv)


def _cuda() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return torch.cuda.is_available()


def main(argv: list[str] | None = None):
    args = parse_args(argv)
    return generate(args) if args.command == "generate" else evaluate(args)


if __name__ == "__main__":
    main(sys.argv[1:])
