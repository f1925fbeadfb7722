"""Decode time per token of LaCT at two prefix lengths, with the decoding cache vs the official no-cache path
(which re-runs the whole prefix for every token, spec Q31).

    .venv/bin/python scripts/bench/bench_lact_decode.py [--prefixes 512 4096] [--cached-steps 32] [--uncached-steps 3]

Expected: cached time per token is about flat in the prefix length (ratio near 1); uncached grows with it.
The default config is small but not tiny (hidden 256, 4 layers, window = chunk = 1024) so it runs in well under
two minutes on a laptop-class CPU while the 4096 prefix still spans several chunks and windows.
"""

from __future__ import annotations

import argparse
import time

import torch

from refine.models.lact import LaCTForCausalLM, tiny_lact_config


def bench_config():
    return tiny_lact_config(
        vocab_size=32000, hidden_size=256, num_hidden_layers=4, num_attn_heads=4, num_lact_heads=2,
        lact_chunk_size=1024, window_size=1024, w0_w2_low_rank=16, intermediate_size=704,
    )


@torch.inference_mode()
def time_cached(model, prefix, steps):
    out = model(prefix, use_cache=True, logits_to_keep=1)
    cache, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
    tokens = [token]
    start = time.perf_counter()
    for _ in range(steps):
        out = model(token, past_key_values=cache, use_cache=True, logits_to_keep=1)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(token)
    return (time.perf_counter() - start) / steps, torch.cat(tokens, 1)


@torch.inference_mode()
def time_uncached(model, prefix, steps):
    seq = prefix
    token = model(seq, logits_to_keep=1).logits[:, -1].argmax(-1, keepdim=True)
    tokens = [token]
    start = time.perf_counter()
    for _ in range(steps):
        seq = torch.cat([seq, token], dim=1)
        token = model(seq, logits_to_keep=1).logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(token)
    return (time.perf_counter() - start) / steps, torch.cat(tokens, 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefixes", type=int, nargs="+", default=[512, 4096])
    parser.add_argument("--cached-steps", type=int, default=32)
    parser.add_argument("--uncached-steps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1 avoids thread-pool contention on shared CI machines)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(args.seed)
    config = bench_config()
    model = LaCTForCausalLM(config).eval()
    print(f"config: hidden {config.hidden_size}, layers {config.num_hidden_layers}, chunk {config.lact_chunk_size}, "
          f"window {config.window_size}, params {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M, "
          f"threads {torch.get_num_threads()}")
    results = {}
    for length in args.prefixes:
        prefix = torch.randint(3, config.vocab_size, (1, length))
        cached, cached_tokens = time_cached(model, prefix, args.cached_steps)
        uncached, uncached_tokens = time_uncached(model, prefix, args.uncached_steps)
        n = min(cached_tokens.shape[1], uncached_tokens.shape[1])
        same = bool(torch.equal(cached_tokens[:, :n], uncached_tokens[:, :n]))
        results[length] = (cached, uncached)
        print(f"prefix {length:5d}: cached {cached * 1e3:8.2f} ms/token   uncached {uncached * 1e3:9.2f} ms/token   "
              f"speed-up {uncached / cached:6.1f}x   same greedy tokens: {same}")
    if len(args.prefixes) >= 2:
        short, long = args.prefixes[0], args.prefixes[-1]
        print(f"ratio {long}/{short}: cached {results[long][0] / results[short][0]:.2f}   "
              f"uncached {results[long][1] / results[short][1]:.2f}")


if __name__ == "__main__":
    main()
