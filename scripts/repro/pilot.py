"""The pilot that sized the study's mid-training (issue 23, v2), on the *validation* split only.

The first full study (v1) found its positive control did not move: 32 NTP updates at lr 3e-4 on 4L documents
changed the retrieval measure by +2 pp (interval over 0). Before fixing v2's sizes, this script asks, for a few
candidate budgets, how far plain NTP mid-training (AdamW, the trainer's NTP objective without Ray) moves greedy
exact match beyond L on held-out items of the validation split -- never the test split the study reports on:

    .venv/bin/python scripts/repro/pilot.py --work runs/repro/full --lr 1e-3 --steps 64 --batch 4 --pairs 8 --min-distance 128

It needs the work dir's data splits and pre-trained model (stage 1 of run.py). Prints one line per candidate.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from repro import kv, measures

BINS = ((128, 256), (256, 512))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--min-distance", type=int, default=kv.PAIR_LEN)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--items", type=int, default=128, help="validation items per distance bin")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--task", action="store_true",
                        help="train on the task directly: query prompts of the train split (distances 16 to length-16), "
                             "loss on the two value tokens only")
    args = parser.parse_args(argv)

    import random

    import pandas as pd
    import torch

    torch.manual_seed(args.seed)
    model, tokenizer = measures.load(args.work / "models" / "pretrained")
    vocab = kv.Vocab(tokenizer)
    val_stream = measures.token_stream(tokenizer, args.work / "data" / "val.parquet")[0]
    items = kv.eval_items(tokenizer, val_stream, vocab, BINS, args.items, 555)
    score = lambda: {b: 100 * s.count("1") / len(s) for b, s in measures.kv_exact_match(model, items).items()}
    with torch.no_grad():
        before = score()
    rows = list(pd.read_parquet(args.work / "data" / "train.parquet").text)
    random.Random(args.seed).shuffle(rows)
    if args.task:
        train_stream = measures.token_stream(tokenizer, args.work / "data" / "train.parquet")[0]
        qa = kv.eval_items(tokenizer, train_stream, vocab, [(16, args.length - 16)], args.steps * args.batch, args.seed)
        docs = [q["ids"] + q["answer_ids"] for q in qa]
    else:
        docs = kv.planted_documents(tokenizer, rows[:args.steps * args.batch], vocab, args.length, args.pairs,
                                    args.seed, args.min_distance)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    model.train()
    start = time.time()
    for step in range(len(docs) // args.batch):
        chunk = docs[step * args.batch:(step + 1) * args.batch]
        batch = chunk if args.task else [tokenizer(d, add_special_tokens=False)["input_ids"] for d in chunk]
        width = max(map(len, batch))
        ids = torch.tensor([b + [tokenizer.eos_token_id] * (width - len(b)) for b in batch])
        mask = torch.tensor([[1] * len(b) + [0] * (width - len(b)) for b in batch])
        labels = ids.masked_fill(mask == 0, -100)
        if args.task:  # the answer only: the two value tokens at the end of each row
            labels = torch.full_like(ids, -100)
            for row, b in enumerate(batch):
                labels[row, len(b) - 2:len(b)] = ids[row, len(b) - 2:len(b)]
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    with torch.no_grad():
        after = score()
    print(f"pilot{' task' if args.task else ''} lr={args.lr} steps={args.steps} batch={args.batch} pairs={args.pairs} min_distance={args.min_distance}"
          f" seed={args.seed}: " + "  ".join(f"{b} {before[b]:.1f} -> {after[b]:.1f}" for b in before)
          + f"  ({time.time() - start:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
