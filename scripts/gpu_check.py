"""The Python half of scripts/gpu_check.sh (run that script; this file only builds its inputs and reads its runs).

    python scripts/gpu_check.py build --out DIR --docs N [--seq-len 16384]
        DIR/model: fla DeltaNet-1.3B (the DELTANET_1_3B config below), randomly initialised, bf16 safetensors, with
        the demo tokenizer (data/demo/model: ids < 512 fit the 32000-token vocabulary); DIR/docs.parquet: N
        documents of just under --seq-len tokens, windows of the bundled corpus (no network).
    python scripts/gpu_check.py summary --out DIR --tokens T faithful fast
        per NSP mode: the estimate printed at start (from DIR/<mode>.log), peak GPU memory and the step time of
        DIR/runs/<mode>/metrics.jsonl, and T document tokens / step time.
    python scripts/gpu_check.py params
        the parameter count of DELTANET_1_3B built on the meta device.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL = REPO_ROOT / "data" / "demo" / "model"
CORPUS = REPO_ROOT / "data" / "corpus" / "python_docs.parquet"
# fla-hub/delta_net-1.3B-100B (spec official-behaviour §5.2: fla's DeltaNetConfig defaults), written out so the
# check does not depend on the defaults of the installed fla; fused kernels on, as on a GPU.
DELTANET_1_3B = dict(
    model_type="delta_net", attn_mode="chunk", hidden_size=2048, num_hidden_layers=24, num_heads=16,
    vocab_size=32000, expand_k=1.0, expand_v=1.0, hidden_ratio=4, intermediate_size=None, use_gate=False,
    use_short_conv=True, conv_size=4, use_beta=True, qk_norm="l2", qk_activation="silu", use_output_norm=True,
    hidden_act="swish", norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
    fuse_norm=True, fuse_swiglu=True, fuse_cross_entropy=True, fuse_linear_cross_entropy=False,
)
MARGIN_TOKENS = 64  # a decoded window may re-tokenise a few tokens longer: stay under max_prompt_length


def deltanet_config():
    from transformers import AutoConfig

    import refine.models  # noqa: F401 - registers the fla models

    values = dict(DELTANET_1_3B)
    return AutoConfig.for_model(values.pop("model_type"), **values)


def count_params() -> int:
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(deltanet_config())
    return sum(p.numel() for p in model.parameters())


def build_model(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(deltanet_config(), dtype=torch.bfloat16)
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(DEMO_MODEL / name, out / name)


def build_docs(out: Path, n_docs: int, seq_len: int) -> None:
    """n_docs windows of seq_len - MARGIN_TOKENS tokens of the corpus (wrapping around), each from its own offset."""
    import pandas as pd
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the tokenizer folder's config.json names a model type not registered here
    tokenizer = AutoTokenizer.from_pretrained(DEMO_MODEL)
    text = "\n\n".join(pd.read_parquet(CORPUS)["text"])
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    length = seq_len - MARGIN_TOKENS
    docs = []
    for i in range(n_docs):
        start = i * len(ids) // max(n_docs, 1)
        window = (ids[start:] + ids) * (1 + length // len(ids))
        docs.append(tokenizer.decode(window[:length]))
    lengths = [len(x) for x in tokenizer(docs, add_special_tokens=False)["input_ids"]]
    if max(lengths) > seq_len:
        sys.exit(f"gpu_check.py: a document re-tokenises to {max(lengths)} > {seq_len} tokens")
    pd.DataFrame({"text": docs}).to_parquet(out)


def summary(out: Path, tokens: int, modes: list[str]) -> int:
    """Prints one line per mode; returns the number of modes without a finished step."""
    failed = 0
    for mode in modes:
        log = out / f"{mode}.log"
        estimate = re.findall(r"total ([\d.]+ [GM]iB)\n", log.read_text()) if log.exists() else []
        records = []
        metrics = out / "runs" / mode / "metrics.jsonl"
        if metrics.exists():
            records = [json.loads(line)["data"] for line in metrics.read_text().splitlines() if line.strip()]
        steps = [r for r in records if "timing_s/step" in r]
        if not steps:
            failed += 1
            print(f"{mode:9s} no finished step (see {log})")
            continue
        step = steps[-1]
        seconds = step["timing_s/step"]
        print(f"{mode:9s} peak allocated {step.get('perf/max_memory_allocated_gb_ttt', float('nan')):.1f} GiB, "
              f"reserved {step.get('perf/max_memory_reserved_gb_ttt', float('nan')):.1f} GiB "
              f"(estimate {estimate[0] if estimate else 'n/a'}); step {seconds:.1f} s, "
              f"{tokens / seconds:,.0f} document tokens/s")
    return failed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build")
    build.add_argument("--out", type=Path, required=True)
    build.add_argument("--docs", type=int, required=True)
    build.add_argument("--seq-len", type=int, default=16384)
    report = sub.add_parser("summary")
    report.add_argument("--out", type=Path, required=True)
    report.add_argument("--tokens", type=int, required=True)
    report.add_argument("modes", nargs="+")
    sub.add_parser("params")
    args = parser.parse_args(argv)
    if args.command == "build":
        args.out.mkdir(parents=True, exist_ok=True)
        build_docs(args.out / "docs.parquet", args.docs, args.seq_len)
        model = args.out / "model"
        if not ((model / "config.json").exists() and any(model.glob("*.safetensors"))):  # reruns reuse it
            build_model(model)
        print(f"gpu_check.py: {args.out}/model ({count_params():,} parameters), {args.docs} documents in "
              f"{args.out}/docs.parquet")
    elif args.command == "summary":
        sys.exit(1 if summary(args.out, args.tokens, args.modes) else 0)
    else:
        print(count_params())


if __name__ == "__main__":
    main()
