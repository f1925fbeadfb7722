"""The final-norm hidden states of a forward without `output_hidden_states=True`.

`output_hidden_states=True` keeps every layer's [B, S, H] input alive until the forward returns (about 3 GiB per
forward at S = 16K for a 24-layer, 2048-wide model), while ReFINE only needs the last one: the final-norm output,
which every causal LM here (fla's models, LaCT) feeds to its output embedding after slicing `logits_to_keep` and,
for LaCT's exact padding, after restoring the caller's row order. A pre-hook on the output embedding reads exactly
that tensor.
"""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def capture_last_hidden(model):
    """Collects, per forward inside the block, the final-norm hidden states the LM head receives
    ([B, kept positions, H])."""
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embedding to read the last hidden states from")
    seen: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        yield seen
    finally:
        handle.remove()
