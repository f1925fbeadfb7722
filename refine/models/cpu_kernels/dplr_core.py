"""The diagonal-plus-low-rank delta rule (fla's "generalized delta rule", RWKV-7) in plain PyTorch.

State convention (key-first, `S [B, H, K, V]`), for every token t, with `w_t` a log decay per key:

    S_t = diag(exp(w_t)) S_{t-1} + b_t (a_t^T S_{t-1}) + k_t v_t^T,      o_t = S_t^T (scale r_t)

(RWKV-7 passes a = -kk, b = kk * a_gate.) Chunkwise: with x_i = a_i^T S_{i-1} the rows the low-rank term reads,
`(I - A_ab) x = A_ak v + (a * exp(G_{i-1})) S_0` for strictly lower `A_ab[i,j] = sum_k a_ik b_jk decay(j, i-1]_k`
and `A_ak` alike, solved per chunk with one unit-triangular solve; the outputs and the carried state then add the
x rows through b as the values enter through k. Decay factors come from `gla_core.segment_decays` (segment sums).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from refine.models.cpu_kernels.banner import announce_once
from refine.models.cpu_kernels.gla_core import check_varlen, segment_decays
from refine.models.cpu_kernels.varlen import VarlenLayout

CHUNK = 16  # per-key decays make the in-chunk factors [C, C, K]


def _weighted(x, y, decay):  # [.., i, j] = sum_k x_ik y_jk decay_ijk
    return torch.einsum("...ik,...jk,...ijk->...ij", x, y, decay)


def chunk_dplr_core(r, w, k, v, a, b, scale, initial_state, chunk_size=CHUNK):
    """r,w,k,a,b `[B,T,H,K]`, v `[B,T,H,V]` -> `(o [B,T,H,V], S [B,H,K,V])`."""
    B, T, H, K = k.shape
    V = v.shape[-1]
    C = chunk_size
    pad = (-T) % C
    if pad:  # zero inputs and log decays after the end leave outputs and state unchanged
        r, w, k, v, a, b = (F.pad(x, (0, 0, 0, 0, 0, pad)) for x in (r, w, k, v, a, b))
    n = (T + pad) // C

    def chunked(x):
        return x.reshape(B, n, C, H, x.shape[-1]).movedim(3, 1)

    r, w, k, v, a, b = chunked(r) * scale, chunked(w), chunked(k), chunked(v), chunked(a), chunked(b)
    G, to_end, pairwise = segment_decays(w)
    G_before = F.pad(w.cumsum(-2)[..., :-1, :], (0, 0, 1, 0))  # decays up to i - 1: what x_i reads
    before = F.pad(pairwise[..., :-1, :, :], (0, 0, 0, 0, 1, 0))  # [i, j] = decay(j, i - 1], j < i
    strictly_lower = torch.ones(C, C, dtype=torch.bool, device=r.device).tril(-1)
    unit_lower = torch.eye(C, dtype=r.dtype, device=r.device) - _weighted(a, b, before) * strictly_lower
    a_k = _weighted(a, k, before) * strictly_lower
    x_from_v = torch.linalg.solve_triangular(unit_lower, a_k @ v, upper=False, unitriangular=True)
    x_from_s = torch.linalg.solve_triangular(unit_lower, a * G_before.exp(), upper=False, unitriangular=True)
    r_k, r_b = _weighted(r, k, pairwise), _weighted(r, b, pairwise)  # pairwise is 0 above the diagonal
    r_decayed, chunk_decay = r * G.exp(), G[..., -1, :].exp()[..., None]
    k_to_end, b_to_end = k * to_end.exp(), b * to_end.exp()

    S = r.new_zeros(B, H, K, V) if initial_state is None else initial_state
    outputs = []
    for i in range(n):
        x = x_from_v[:, :, i] + x_from_s[:, :, i] @ S  # [B, H, C, V]
        outputs.append(r_decayed[:, :, i] @ S + r_k[:, :, i] @ v[:, :, i] + r_b[:, :, i] @ x)
        S = S * chunk_decay[:, :, i] + k_to_end[:, :, i].transpose(-1, -2) @ v[:, :, i] \
            + b_to_end[:, :, i].transpose(-1, -2) @ x
    o = torch.stack(outputs, dim=2).movedim(1, 3).reshape(B, n * C, H, V)[:, :T]
    return o, S


def recurrent_dplr_core(r, w, k, v, a, b, scale, initial_state):
    """Token by token (decoding, and the plain recurrence). Same arguments as `chunk_dplr_core`."""
    B, T, H, K = k.shape
    V = v.shape[-1]
    S = r.new_zeros(B, H, K, V) if initial_state is None else initial_state
    outputs = []
    for t in range(T):
        read = torch.einsum("bhk,bhkv->bhv", a[:, t], S)
        S = S * w[:, t].exp()[..., None] + b[:, t, ..., None] * read[..., None, :] \
            + k[:, t, ..., None] * v[:, t, ..., None, :]
        outputs.append(torch.einsum("bhk,bhkv->bhv", r[:, t] * scale, S))
    o = torch.stack(outputs, dim=1) if outputs else v.new_zeros(B, 0, H, V)
    return o, S


def auto_dplr_core(r, w, k, v, a, b, scale, initial_state):
    """The token loop for short (decoding) inputs, else the equal chunk form."""
    if r.shape[1] < CHUNK:
        return recurrent_dplr_core(r, w, k, v, a, b, scale, initial_state)
    return chunk_dplr_core(r, w, k, v, a, b, scale, initial_state)


def run_dplr(core, r, w, k, v, a, b, scale, initial_state, output_final_state, cu_seqlens):
    """fla's calling convention: checks, fp32 compute (fp64 kept), varlen; output in v's dtype, fp32 state."""
    announce_once()
    check_varlen(r, initial_state, cu_seqlens)
    if scale is None:
        scale = r.shape[-1] ** -0.5
    out_dtype = v.dtype
    dtype = torch.float64 if v.dtype == torch.float64 else torch.float32
    r, w, k, v, a, b = (x.to(dtype) for x in (r, w, k, v, a, b))
    h0 = None if initial_state is None else initial_state.to(dtype)
    with torch.autocast(device_type=v.device.type, enabled=False):
        if cu_seqlens is not None:
            layout = VarlenLayout.from_cu_seqlens(cu_seqlens, r.shape[1])
            o, S = core(*(layout.pad(x) for x in (r, w, k, v, a, b)), scale, h0)
            o = layout.unpad(o)
        else:
            o, S = core(r, w, k, v, a, b, scale, h0)
    return o.to(out_dtype), (S if output_final_state else None)
