"""A multi-token segment appended to a LaCT decoding cache, read with the chunked recurrence instead of token by
token, and without in-place writes (so gradients flow through the cache: the fast NSP mode reads a document
segment by segment with gradients, `refine.worker.fast.ops.run_document`).

The open chunk of the cache starts on a chunk boundary (`cache.open_chunk`), so the buffered tokens followed by
the new ones are exactly the tokens of the whole-sequence pass from that boundary on: running
`block_causal_lact_swiglu` over them from the cache's fast weights gives the whole-sequence outputs for the new
tokens (the buffered tokens' outputs were emitted before and are dropped) and leaves the same closed-chunk state
and open chunk that a whole pass would.
"""

from __future__ import annotations

import torch

from refine.models.lact.cache import LaCTLayerCache, open_chunk
from refine.models.lact.ttt_ops import block_causal_lact_swiglu


def ttt_continue(cache: LaCTLayerCache, q, k, v, lr, mom, chunk_size: int, use_muon: bool) -> torch.Tensor | None:
    """Outputs [n, T, d_out] of T new tokens that all feed the fast weights, updating `cache` (new tensors only).

    Returns None (cache untouched) when the rows' open chunks hold different numbers of tokens (a batch of branches
    from different positions); the caller then steps token by token.
    """
    counts = cache.count
    buffered = int(counts[0])
    if not bool((counts == buffered).all()):
        return None

    def joined(buffer, new):
        return torch.cat([buffer[:, :buffered].to(new.dtype), new], dim=1)

    keys, values, rates = joined(cache.buf_k, k), joined(cache.buf_v, v), joined(cache.buf_lr, lr)
    momentum = None if mom is None else joined(cache.buf_mom, mom)
    queries = torch.cat([q.new_zeros(q.shape[0], buffered, q.shape[2]), q], dim=1)  # buffered outputs are dropped
    y, state = block_causal_lact_swiglu(cache.fast, queries, keys, values, rates, momentum, chunk_size, use_muon)
    total = torch.full_like(counts, keys.shape[1])
    cache.fast = state
    cache.buf_k, cache.buf_v, cache.buf_lr, cache.buf_mom, cache.count = open_chunk(
        keys, values, rates, momentum, total, chunk_size)
    return y[:, buffered:]
