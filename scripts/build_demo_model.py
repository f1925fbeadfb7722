"""Build the embedded demo: tiny tokenizer, tiny pre-trained DeltaNet, and the mid-training parquet files.

    .venv/bin/python scripts/build_demo_model.py            # writes data/demo/{model/,midtrain_train.parquet,...}
    .venv/bin/python scripts/build_demo_model.py --data-only  # only the parquet files, with the saved tokenizer

Everything comes from `data/corpus/python_docs.parquet` (the Python Language Reference topics, see
scripts/build_corpus.py) and is deterministic for a given machine and stack (fixed seeds, fixed step count):
1. the byte-level BPE tokenizer of `refine.models.tiny.train_tiny_tokenizer` (vocab 512; unk 0, bos 1, eos 2, no pad);
2. the corpus split by document title into train / validation documents (every 8th title is validation), each
   document cut into consecutive windows of 252-256 tokens (`--max-tokens`, the demo's max_prompt_length), so
   the demo's rows are never truncated and (almost) never padded; the mid-training parquet files hold them;
3. a 2-layer, 64-wide fla DeltaNet (`tiny_deltanet_config`) pre-trained with AdamW on random windows of the
   *train* rows only, so the demo's rewards and losses start from a model that has learnt something.
The model is saved in fp32 with the tokenizer beside it (about 1 MB). With the defaults (1200 steps of 8 x 128 tokens,
about 1-3 minutes on 2 cores) the train loss ends near 2.4 and the validation NTP loss near 3.2 (random init: 6.2).
"""

from __future__ import annotations

import argparse
import math
import random
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "data" / "demo"


def token_windows(tokenizer, text: str, max_tokens: int, slack: int = 4) -> list[str]:
    """`text` cut into consecutive windows that re-tokenise to max_tokens - slack .. max_tokens tokens, so the demo
    rows fill the demo's max_prompt_length almost exactly: never truncated, (almost) never padded."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    width = max_tokens - slack
    pieces = []
    for start in range(0, len(ids) - width + 1, width):
        piece = tokenizer.decode(ids[start:start + width])
        if width - slack <= len(tokenizer(piece, add_special_tokens=False)["input_ids"]) <= max_tokens:
            pieces.append(piece)
    return pieces


def build_data(tokenizer, *, max_tokens: int):
    """(train rows, val rows) from the bundled corpus, split by document (every 8th document is validation)."""
    import pandas as pd

    corpus = pd.read_parquet(REPO / "data" / "corpus" / "python_docs.parquet").sort_values("title")
    train, val = [], []
    for index, (title, text) in enumerate(zip(corpus.title, corpus.text)):
        target = val if index % 8 == 7 else train
        target += [{"title": title, "text": piece} for piece in token_windows(tokenizer, text, max_tokens)]
    return train, val


def pretrain(model, tokenizer, passages: list[str], *, steps: int, seq_len: int, batch: int, lr: float, seed: int,
             augment=None):
    """AdamW on random `seq_len`-token windows of the train passages (cosine decay); prints the loss.

    `augment(batch, rng)`, when given, rewrites each [batch, seq_len] id tensor before its step.
    """
    import torch

    rng = random.Random(seed)
    torch.manual_seed(seed)
    ids = [t for p in passages for t in tokenizer(p, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]]
    data = torch.tensor(ids, dtype=torch.long)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    model.train()
    start = time.time()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        offsets = [rng.randrange(0, len(data) - seq_len - 1) for _ in range(batch)]
        x = torch.stack([data[o : o + seq_len] for o in offsets])
        if augment is not None:
            x = augment(x, rng)
        loss = model(input_ids=x, attention_mask=torch.ones_like(x), labels=x).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 25 == 0 or step == steps - 1:
            print(f"step {step:4d}  loss {loss.item():.3f}  ({time.time() - start:.0f}s)", flush=True)
    model.eval()
    return model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    # rows of the demo's max_prompt_length (configs/preset/embedded_demo.yaml): no truncation, no padding
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--data-only", action="store_true",
                        help="rewrite only the two parquet files, with the tokenizer already in --out/model")
    args = parser.parse_args(argv)

    import pandas as pd
    import torch

    import refine.models  # noqa: F401 - registers fla models, CPU kernels without CUDA
    from refine.models.tiny import tiny_deltanet_config, train_tiny_tokenizer
    from transformers import AutoModelForCausalLM

    torch.manual_seed(args.seed)
    if args.data_only:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.out / "model")
    else:
        tokenizer = train_tiny_tokenizer(vocab_size=512)
    train, val = build_data(tokenizer, max_tokens=args.max_tokens)
    print(f"passages: {len(train)} train, {len(val)} validation")
    if args.data_only:
        pd.DataFrame(train).to_parquet(args.out / "midtrain_train.parquet", index=False)
        pd.DataFrame(val).to_parquet(args.out / "midtrain_val.parquet", index=False)
        print(f"wrote the mid-training parquet files in {args.out}")
        return

    model = AutoModelForCausalLM.from_config(tiny_deltanet_config(vocab_size=len(tokenizer)))
    model = pretrain(model, tokenizer, [r["text"] for r in train], steps=args.steps, seq_len=args.seq_len,
                     batch=args.batch, lr=args.lr, seed=args.seed)

    model_dir = args.out / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)
    pd.DataFrame(train).to_parquet(args.out / "midtrain_train.parquet", index=False)
    pd.DataFrame(val).to_parquet(args.out / "midtrain_val.parquet", index=False)
    print(f"wrote {model_dir} and the mid-training parquet files in {args.out}")


if __name__ == "__main__":
    main()
