"""Stage 1: the study's data splits and the NTP pre-trained DeltaNet (cached; rebuilt identically when deleted).

Data: the bundled corpus (data/corpus/python_docs.parquet), split by document title -- every 8th title is the
*test* split (all measures), the title after each 4th of 8 the *validation* split (trainer validation, ablations),
the rest *train* (pre-training and mid-training). Rows are windows of `train_len` tokens of the demo tokenizer
(data/demo/model, byte-level BPE, vocab 512), cut by `scripts/build_demo_model.py`'s `token_windows`.
Model: an fla DeltaNet (`tiny_deltanet_config` widened by `Sizes`), AdamW on random windows of the train split with
`scripts/build_demo_model.py`'s `pretrain` (cosine decay, fixed seed 0), after a *copy warm-up*.

Copy warm-up: a model this size trained on this corpus alone never learns in-context copying within the budget (no
recall, no NIAH: the study's first runs; `scripts/repro/copy_probe.py`), and from scratch it learns to copy random
ids of the full vocabulary only after a long plateau. Copying ids from a small vocabulary is learned in ~800 steps,
and then carries over to the full vocabulary in a few hundred more. So pre-training starts with `Sizes.copy_steps`
steps on synthetic [x][x] rows (x random ids; the first `copy_vocab_steps` with ids below `copy_small_vocab`, the
rest from the full vocabulary), then the NTP pre-training on the corpus at length L = `pretrain_len`, where every
window carries `pretrain_pairs` key -> value pairs written twice (scripts/repro/kv.py), so the model learns the
retrieval format at distances below L; mid-training then extends the context to 4L.
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


def copy_warmup(model, sizes, vocab_size: int, seed: int = 0) -> list[dict]:
    """AdamW (constant lr `pretrain_lr`) on [x][x] rows of random ids; returns the logged losses of both halves."""
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=sizes.pretrain_lr, weight_decay=0.01)
    model.train()
    log, n = [], sizes.copy_span
    for step in range(sizes.copy_steps):
        high = sizes.copy_small_vocab if step < sizes.copy_vocab_steps else vocab_size
        half = torch.randint(3, high, (sizes.copy_batch, n), generator=generator)
        ids = torch.cat([half, half], dim=1)
        losses = F.cross_entropy(model(input_ids=ids).logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
        optimizer.zero_grad()
        losses.mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 200 == 0 or step == sizes.copy_steps - 1:
            log.append({"step": step, "vocab": high, "first_half": round(losses[:, :n - 1].mean().item(), 3),
                        "second_half": round(losses[:, n:].mean().item(), 3)})
            print(f"copy warm-up step {step:4d}  ids < {high}  loss first half {log[-1]['first_half']:.3f}  "
                  f"copy {log[-1]['second_half']:.3f}", flush=True)
    return log


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
    from repro import kv

    start = time.time()
    copy_log = copy_warmup(model, sizes, len(tokenizer))
    passages = list(pd.read_parquet(train_file).text)
    model = pretrain(model, tokenizer, passages, steps=sizes.pretrain_steps, seq_len=sizes.pretrain_len,
                     batch=sizes.pretrain_batch, lr=sizes.pretrain_lr, seed=0,
                     augment=kv.plant_augment(kv.Vocab(tokenizer), sizes.pretrain_pairs))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    record = {"parameters": n_params, "steps": sizes.pretrain_steps, "batch": sizes.pretrain_batch,
              "seq_len": sizes.pretrain_len, "lr": sizes.pretrain_lr, "pairs_per_window": sizes.pretrain_pairs,
              "tokens": sizes.pretrain_steps * sizes.pretrain_batch * sizes.pretrain_len,
              "copy_steps": sizes.copy_steps, "copy_vocab_steps": sizes.copy_vocab_steps,
              "copy_small_vocab": sizes.copy_small_vocab, "copy_span": sizes.copy_span, "copy_batch": sizes.copy_batch,
              "copy_log": copy_log,
              "wall_s": round(time.time() - start, 1)}
    (work / "models" / "pretrain.json").write_text(json.dumps(record, indent=1))
    return out
