"""The delta rule with per-key decays (KDA) and with separate prediction keys (Comba), in plain PyTorch.

State convention (key-first, `S [B, H, K, V]`). With `g_t` a log decay per key `[K]` or per head `[1]`, `p_t` the
key the state is read with (`p = k` unless given) and, for every token t,

    decay_first=True  (KDA, as the gated delta rule):   S' = diag(exp(g_t)) S_{t-1};  u_t = beta_t (v_t - S'^T p_t)
    decay_first=False (Comba, fla's kernels):           u_t = beta_t (v_t - S_{t-1}^T p_t);  S' = diag(exp(g_t)) S_{t-1}
    S_t = S' + k_t u_t^T,    o_t = S_t^T (scale q_t)

The chunk form solves each chunk's u with the UT transform, `(I + A) u = beta (v - (p * exp(G*)) S_0)`,
`A_ij = beta_i sum_k p_ik k_jk exp(sum of g over (j, i*])` for i > j, where i* = i (decay first) or i - 1 (read
before the decay). Decay factors come from `gla_core.segment_decays` (segment sums, never exp(-G)).
This is `delta_core.chunk_delta_core` with the decay widened from one scalar to one per key and the read key
separated from the written one; that core stays the scalar one (the hot path of DeltaNet / GatedDeltaNet).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from refine.models.cpu_kernels.gla_core import segment_decays

PER_KEY_CHUNK = 16  # the in-chunk decay is [C, C, K] for per-key gates: 16 keeps it small (64 for per-head gates)


def _read_decays(gc: torch.Tensor, G: torch.Tensor, pairwise: torch.Tensor, decay_first: bool):
    """(exp(G*) [.., C, Kg], pairwise decay of the read [.., C, C, Kg]) for reads after / before the token's decay."""
    if decay_first:
        return G.exp(), pairwise
    # reading S_{i-1}: the decays up to i - 1, i.e. row i - 1 of the pairwise factors and the exclusive prefix sum
    G_before = F.pad(gc.cumsum(-2)[..., :-1, :], (0, 0, 1, 0))
    return G_before.exp(), F.pad(pairwise[..., :-1, :, :], (0, 0, 0, 0, 1, 0))


def chunk_keyed_delta_core(q, k, v, beta, g, scale, initial_state, p=None, decay_first=True, chunk_size=None):
    """Chunkwise form: `q,k,p [B,T,H,K]`, `v [B,T,H,V]`, `beta [B,T,H]`, `g [B,T,H]`, `[B,T,H,K]` or None
    -> `(o [B,T,H,V], S [B,H,K,V])`."""
    B, T, H, K = k.shape
    V = v.shape[-1]
    p = k if p is None else p
    g = torch.zeros_like(beta) if g is None else g
    g = g[..., None] if g.ndim == 3 else g
    C = chunk_size or (PER_KEY_CHUNK if g.shape[-1] > 1 else 64)
    pad = (-T) % C
    if pad:
        # zero keys/values/betas/log-decays after the end leave the outputs and the state unchanged
        q, k, v, p, g = (F.pad(x, (0, 0, 0, 0, 0, pad)) for x in (q, k, v, p, g))
        beta = F.pad(beta, (0, 0, 0, pad))
    n = (T + pad) // C

    def chunked(x: torch.Tensor) -> torch.Tensor:  # [B, T, H, ...] -> [B, H, n, C, ...]
        return x.reshape(B, n, C, H, *x.shape[3:]).movedim(3, 1)

    q, k, v, p, beta, gc = chunked(q) * scale, chunked(k), chunked(v), chunked(p), chunked(beta), chunked(g)
    G, to_end, pairwise = segment_decays(gc)
    read_decay, read_pairwise = _read_decays(gc, G, pairwise, decay_first)
    strictly_lower = torch.ones(C, C, dtype=torch.bool, device=q.device).tril(-1)

    def weighted(a, b, decay):  # sum_k a_ik b_jk decay_ijk, shared decays across keys take one matrix product
        if decay.shape[-1] == 1:
            return (a @ b.transpose(-1, -2)) * decay[..., 0]
        return torch.einsum("...ik,...jk,...ijk->...ij", a, b, decay)

    a = weighted(p * beta[..., None], k, read_pairwise) * strictly_lower
    unit_lower = a + torch.eye(C, dtype=a.dtype, device=a.device)
    u = torch.linalg.solve_triangular(unit_lower, v * beta[..., None], upper=False, unitriangular=True)
    w = torch.linalg.solve_triangular(unit_lower, p * read_decay * beta[..., None], upper=False, unitriangular=True)
    qk = weighted(q, k, pairwise)  # pairwise is 0 above the diagonal
    q_decayed, k_to_end, chunk_decay = q * G.exp(), k * to_end.exp(), G[..., -1, :].exp()[..., None]

    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state
    outputs = []
    for i in range(n):
        v_new = u[:, :, i] - w[:, :, i] @ S
        outputs.append(q_decayed[:, :, i] @ S + qk[:, :, i] @ v_new)
        S = S * chunk_decay[:, :, i] + k_to_end[:, :, i].transpose(-1, -2) @ v_new
    o = torch.stack(outputs, dim=2).movedim(1, 3).reshape(B, n * C, H, V)[:, :T]
    return o, S


def recurrent_keyed_delta_core(q, k, v, beta, g, scale, initial_state, p=None, decay_first=True):
    """Token-by-token form (decoding, and the plain recurrence). Same arguments as `chunk_keyed_delta_core`."""
    B, T, H, K = k.shape
    V = v.shape[-1]
    p = k if p is None else p
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state
    outputs = []
    for t in range(T):
        decay = None if g is None else (g[:, t, :, None] if g.ndim == 3 else g[:, t]).exp()[..., None]
        if decay is not None and decay_first:
            S = S * decay
        u_t = beta[:, t, :, None] * (v[:, t] - torch.einsum("bhk,bhkv->bhv", p[:, t], S))
        if decay is not None and not decay_first:
            S = S * decay
        S = S + k[:, t, ..., :, None] * u_t[..., None, :]
        outputs.append(torch.einsum("bhk,bhkv->bhv", q[:, t] * scale, S))
    o = torch.stack(outputs, dim=1) if outputs else v.new_zeros(B, 0, H, V)
    return o, S


RECURRENT_MAX_TOKENS = 16  # below this many tokens the loop is as cheap as the chunk form's set-up


def auto_keyed_delta_core(q, k, v, beta, g, scale, initial_state, p=None, decay_first=True):
    """The recurrent stand-ins' core: the token loop for short (decoding) inputs, else the equal chunk form."""
    if q.shape[1] < RECURRENT_MAX_TOKENS:
        return recurrent_keyed_delta_core(q, k, v, beta, g, scale, initial_state, p=p, decay_first=decay_first)
    return chunk_keyed_delta_core(q, k, v, beta, g, scale, initial_state, p=p, decay_first=decay_first)
