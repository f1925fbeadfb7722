"""Can a DeltaNet of a given size learn in-context copying within a step budget? (the study's recall question)

    .venv/bin/python scripts/repro/copy_probe.py --layers 2 --hidden 128 --heads 4 --vocab 57 --steps 1500

Trains a fresh fla DeltaNet from scratch on sequences [x][x], x = `--span` uniformly random ids below `--vocab`:
the first half can only be guessed (loss ln(vocab - 3)), the second half is a copy. Prints both halves' mean loss
every 100 steps; the second half dropping far below the first is in-context copying. The study's planted-pair
retrieval needs that ability; this probe is why its pre-training starts with a copy warm-up (scripts/repro/pretrain.py).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=57, help="ids drawn from 3..vocab-1 (the model's vocab is 512)")
    parser.add_argument("--span", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not 3 < args.vocab <= 512:
        raise SystemExit(f"copy_probe: --vocab {args.vocab}: must be in 4..512 (ids 0-2 are special)")

    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    import refine.models  # noqa: F401
    from refine.models.tiny import tiny_deltanet_config

    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(tiny_deltanet_config(
        vocab_size=512, hidden_size=args.hidden, num_hidden_layers=args.layers, num_heads=args.heads))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    n = args.span
    start = time.time()
    print(f"copy_probe: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {args}", flush=True)
    for step in range(args.steps + 1):
        half = torch.randint(3, args.vocab, (args.batch, n))
        ids = torch.cat([half, half], dim=1)
        logits = model(input_ids=ids).logits[:, :-1]
        losses = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        if step % 100 == 0:
            print(f"step {step:5d}  first half {losses[:, :n - 1].mean():.3f}  second half {losses[:, n:].mean():.3f}"
                  f"  ({time.time() - start:.0f}s)", flush=True)
        if step == args.steps:
            break
        optimizer.zero_grad()
        losses.mean().backward()
        optimizer.step()


if __name__ == "__main__":
    main()
