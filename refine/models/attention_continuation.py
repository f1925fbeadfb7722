"""fla's attention layer continuing a cache over several tokens with a padding mask (hybrid configs, fast NSP).

A branch of the fast NSP mode re-reads token r - 1 and the k response tokens on top of cached keys/values whose
rows have different lengths (left-padded and masked, `refine.models.state_branching.branch_mask`). fla 0.6.0's
attention layer unpads its inputs with `fla.layers.utils.unpad_input`, which takes either a prefill (as many
queries as keys) or one decoding query, and refuses anything between. `unpad_input` here takes any number of
queries: keys and values are unpadded by the whole mask, queries by its last q_len columns, so flash-attn's
variable-length call (causal, aligned to the last key) sees each row's real cached keys first. Installed into
`fla.layers.attn` on every device (`refine.models.fla_models`); the two cases fla handles go to fla's function.
"""

from __future__ import annotations

import torch


def unpad_input(q, states, attention_mask: torch.Tensor, q_len: int, keepdim: bool = False):
    """fla's `unpad_input` contract (q, states, indices_q, (cu_q, cu_k), (max_q, max_k)) for 1 <= q_len <= k_len."""
    from fla.layers import utils  # fla: the module whose function this extends

    seq_len = states[0].shape[1]
    if q_len in (seq_len, 1):
        return utils.unpad_input(q, states, attention_mask, q_len, keepdim)
    indices_k, cu_k, max_k = utils.get_unpad_data(attention_mask)
    indices_q, cu_q, max_q = utils.get_unpad_data(attention_mask[:, -q_len:])
    state = tuple(s.flatten(0, 1)[indices_k] for s in states)
    single = isinstance(q, torch.Tensor)
    queries = tuple(t.flatten(0, 1)[indices_q] for t in ((q,) if single else q))
    if keepdim:
        queries = tuple(t.unsqueeze(0) for t in queries)
        state = tuple(s.unsqueeze(0) for s in state)
    return queries[0] if single else queries, state, indices_q, (cu_q, cu_k), (max_q, max_k)
