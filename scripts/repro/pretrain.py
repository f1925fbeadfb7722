"""Stage 1: the study's data splits and the NTP pre-trained DeltaNet (cached; rebuilt identically when deleted).

Data: the bundled corpus (data/corpus/python_docs.parquet), split by document title -- every 8th title is the
*test* split (all measures), the title after each 4th of 8 the *validation* split (trainer validation, ablations),
the rest *train* (pre-training and mid-training). Rows are windows of `train_len` tokens of the demo tokenizer
(data/demo/model, byte-level BPE, vocab 512), cut by `scripts/build_demo_model.py`'s `token_windows`.
Model: an fla DeltaNet (`tiny_deltanet_config` widened by `Sizes`), AdamW on random windows of the train split with
`scripts/build_demo_model.py`'s `pretrain` (cosine decay, fixed seed 0).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))  # build_demo_model is a script, not a package module

TOKENIZER_DIR = REPO / "data" / "demo" / "model"
SPLITS = ("train", "val", "test")


def split_of(index: int) -> str:
    return "test" if index % 8 == 7 else "val" if index % 8 == 3 else "train"


def build_splits(work: Path, train_len: int) -> dict[str, Path]:
    """Parquet files (columns title, text) per split under work/data; skipped when present."""
    import pandas as pd
    from build_demo_model import token_windows
    from transformers import AutoTokenizer

    out = work / "data"
    paths = {split: out / f"{split}.parquet" for split in SPLITS}
    if all(p.exists() for p in paths.values()):
        return paths
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    corpus = pd.read_parquet(REPO / "data" / "corpus" / "python_docs.parquet").sort_values("title")
    rows: dict[str, list] = {split: [] for split in SPLITS}
    for index, (title, text) in enumerate(zip(corpus.title, corpus.text)):
        rows[split_of(index)] += [{"title": title, "text": t} for t in token_windows(tokenizer, text, train_len)]
    out.mkdir(parents=True, exist_ok=True)
    for split, path in paths.items():
        pd.DataFrame(rows[split]).to_parquet(path, index=False)
    print(f"repro: data splits {({s: len(r) for s, r in rows.items()})} rows of <= {train_len} tokens in {out}")
    return paths


def model_config(sizes, vocab_size: int):
    from refine.models.tiny import tiny_deltanet_config

    return tiny_deltanet_config(vocab_size=vocab_size, hidden_size=sizes.hidden_size,
                                num_hidden_layers=sizes.num_layers, num_heads=sizes.num_heads)


def random_init_model(work: Path, sizes) -> Path:
    """The same architecture at its (seeded) random initialisation: the floor every measure must beat."""
    out = work / "models" / "random_init"
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import refine.models  # noqa: F401

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(model_config(sizes, len(tokenizer)))
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def pretrained_model(work: Path, sizes, train_file: Path) -> Path:
    """NTP pre-training to the fixed budget `sizes.pretrain_steps`; writes models/pretrained (+ pretrain.json)."""
    out = work / "models" / "pretrained"
    if (out / "config.json").exists():
        return out
    import pandas as pd
    import torch
    from build_demo_model import pretrain
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import refine.models  # noqa: F401

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(model_config(sizes, len(tokenizer)))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"repro: pre-training a {n_params / 1e6:.2f}M-parameter DeltaNet for {sizes.pretrain_steps} steps", flush=True)
    start = time.time()
    passages = list(pd.read_parquet(train_file).text)
    model = pretrain(model, tokenizer, passages, steps=sizes.pretrain_steps, seq_len=sizes.pretrain_seq_len,
                     batch=sizes.pretrain_batch, lr=sizes.pretrain_lr, seed=0)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    record = {"parameters": n_params, "steps": sizes.pretrain_steps, "batch": sizes.pretrain_batch,
              "seq_len": sizes.pretrain_seq_len, "lr": sizes.pretrain_lr,
              "tokens": sizes.pretrain_steps * sizes.pretrain_batch * sizes.pretrain_seq_len,
              "wall_s": round(time.time() - start, 1)}
    (work / "models" / "pretrain.json").write_text(json.dumps(record, indent=1))
    return out
