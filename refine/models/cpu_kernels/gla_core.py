"""Gated linear attention (GLA, simple GLA, retention) in plain PyTorch: a chunkwise form and a token loop.

State convention (fla's default, key-first): `S` has shape `[B, H, K, V]`, and for every token t

    S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T      (g_t: log decay per key [K], per head [1], or none)
    o_t = S_t^T (scale * q_t)

Gates come as `[B, T, H, K]` (per key: GLA, HGRN2), `[B, T, H]` (per head: simple GLA, retention) or `None`;
inside the cores they are always `[..., Kg]` with Kg = K or 1, so one code path serves both by broadcasting.
`run_gla` does the bookkeeping (dtype, scale, varlen, state layout) around either core. Everything is ordinary
autograd, so gradients reach q, k, v, the gates, the initial state and flow back through the final state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from refine.models.cpu_kernels.banner import announce_once
from refine.models.cpu_kernels.varlen import VarlenLayout


def segment_decays(gc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decay factors of one chunk from its log decays `gc [..., C, Kg]`, each summed over its own segment.

    Returns `(G, to_end, pairwise)`: `G_i = sum_{l<=i} g_l`, `to_end_j = sum_{l>j} g_l` (both `[..., C, Kg]`) and
    `pairwise[i, j] = exp(sum_{j<l<=i} g_l)` for i >= j, 0 above the diagonal (`[..., C, C, Kg]`). Every exponent
    is a sum of same-sign terms taken directly, never a difference of two cumulative sums: with strong decays
    `exp(-G_j)` alone overflows fp32, and differences of long sums lose about |G| * eps in the exponent.
    """
    C = gc.shape[-2]
    G = gc.cumsum(-2)
    to_end = F.pad(gc.flip(-2).cumsum(-2).flip(-2)[..., 1:, :], (0, 0, 0, 1))
    strictly_lower = torch.ones(C, C, dtype=torch.bool, device=gc.device).tril(-1)
    lower = torch.ones(C, C, dtype=torch.bool, device=gc.device).tril()
    steps = gc[..., :, None, :] * strictly_lower[..., None]  # [.., l, j, Kg] = g_l for l > j
    segment = steps.cumsum(-3)  # [.., i, j, Kg] = sum_{j < l <= i} g_l
    pairwise = torch.where(lower[..., None], segment, torch.zeros_like(segment)).exp() * lower[..., None]
    return G, to_end, pairwise


def chunk_gla_core(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None,
    scale: float,
    initial_state: torch.Tensor | None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunkwise GLA: `q,k [B,T,H,K]`, `v [B,T,H,V]`, `g [B,T,H,Kg] | None` -> `(o [B,T,H,V], S [B,H,K,V])`.

    Within a chunk the outputs are a masked, decay-weighted attention; between chunks the state carries the
    rest, so the Python loop runs over T / C chunks. Per-key gates make the in-chunk decay a `[C, C, K]` tensor,
    so callers pick a smaller C for them (memory), which changes the work split, not the result.
    """
    B, T, H, K = k.shape
    V = v.shape[-1]
    C = chunk_size
    pad = (-T) % C
    if pad:
        # zero keys/values and zero log decays after the end leave the outputs and the state unchanged
        q, k, v = (F.pad(x, (0, 0, 0, 0, 0, pad)) for x in (q, k, v))
        g = None if g is None else F.pad(g, (0, 0, 0, 0, 0, pad))
    n_chunks = (T + pad) // C

    def chunked(x: torch.Tensor) -> torch.Tensor:  # [B, T, H, D] -> [B, H, n, C, D]
        return x.reshape(B, n_chunks, C, H, x.shape[-1]).movedim(3, 1)

    q, k, v = chunked(q) * scale, chunked(k), chunked(v)
    if g is not None:
        G, to_end, pairwise = segment_decays(chunked(g))
        q_decayed, k_to_end, chunk_decay = q * G.exp(), k * to_end.exp(), G[..., -1, :].exp()[..., None]
        if g.shape[-1] == 1:  # per-head decay: one [C, C] weight matrix per chunk
            scores = (q @ k.transpose(-1, -2)) * pairwise[..., 0]
        else:
            scores = torch.einsum("...ik,...jk,...ijk->...ij", q, k, pairwise)
    else:
        lower = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
        q_decayed, k_to_end, chunk_decay = q, k, None
        scores = (q @ k.transpose(-1, -2)) * lower
    intra = scores @ v  # [B, H, n, C, V]

    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state
    outputs = []
    for i in range(n_chunks):
        outputs.append(q_decayed[:, :, i] @ S + intra[:, :, i])
        S_carried = S if chunk_decay is None else S * chunk_decay[:, :, i]
        S = S_carried + k_to_end[:, :, i].transpose(-1, -2) @ v[:, :, i]
    o = torch.stack(outputs, dim=2)  # [B, H, n, C, V]
    o = o.movedim(1, 3).reshape(B, n_chunks * C, H, V)[:, :T]
    return o, S


def recurrent_gla_core(q, k, v, g, scale, initial_state):
    """Token-by-token GLA (decoding, and the plain recurrence for checks). Same arguments as `chunk_gla_core`."""
    B, T, H, K = k.shape
    V = v.shape[-1]
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state
    outputs = []
    for t in range(T):
        if g is not None:
            S = S * g[:, t].exp()[..., None]  # [B, H, Kg, 1] scales the rows of S
        S = S + k[:, t, ..., :, None] * v[:, t, ..., None, :]
        outputs.append(torch.einsum("bhk,bhkv->bhv", q[:, t] * scale, S))
    o = torch.stack(outputs, dim=1) if outputs else v.new_zeros(B, 0, H, V)
    return o, S


# Below this many tokens per sequence the token loop is as cheap as the chunk form's set-up.
RECURRENT_MAX_TOKENS = 16
PER_KEY_CHUNK = 16  # in-chunk decay is [C, C, K]: 16 keeps it small; per-head gates use fla's 64


def auto_gla_core(q, k, v, g, scale, initial_state):
    """The recurrent stand-ins' core: the token loop for short (decoding) inputs, else the (equal) chunk form."""
    if q.shape[1] < RECURRENT_MAX_TOKENS:
        return recurrent_gla_core(q, k, v, g, scale, initial_state)
    return chunk_gla_core(q, k, v, g, scale, initial_state, chunk_size=default_chunk(g))


def default_chunk(g: torch.Tensor | None) -> int:
    """The chunk length the chunk core uses for these gates (see `PER_KEY_CHUNK`)."""
    return PER_KEY_CHUNK if g is not None and g.shape[-1] > 1 else 64


def check_varlen(q: torch.Tensor, initial_state, cu_seqlens) -> None:
    """fla's checks on a packed batch, with fla's messages."""
    if cu_seqlens is None:
        return
    if q.shape[0] != 1:
        raise ValueError(f"The batch size is expected to be 1 rather than {q.shape[0]} when using `cu_seqlens`.")
    if initial_state is not None and initial_state.shape[0] != len(cu_seqlens) - 1:
        raise ValueError(
            f"The number of initial states is expected to be equal to the number of input sequences, "
            f"i.e., {len(cu_seqlens) - 1} rather than {initial_state.shape[0]}."
        )


def run_gla(
    core,
    *,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None,
    scale: float | None,
    initial_state: torch.Tensor | None,
    output_final_state: bool,
    cu_seqlens: torch.Tensor | None,
    state_v_first: bool = False,
    **core_kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """fla's calling convention around a GLA core: checks, dtype, default scale, varlen, state layout.

    `g` is `[B, T, H, K]`, `[B, T, H]` or None. The output has `v`'s dtype; the final state is fp32 as in fla
    (fp64 when the inputs are fp64).
    """
    announce_once()
    B, T, H, K = k.shape
    if q.shape != k.shape:
        raise ValueError(f"q and k must have the same shape, got {tuple(q.shape)} and {tuple(k.shape)}")
    if v.shape[:3] != (B, T, H):
        raise ValueError(f"v must be [B, T, H, V] = [{B}, {T}, {H}, V], got {tuple(v.shape)}")
    if g is not None and g.shape not in ((B, T, H), (B, T, H, K)):
        raise ValueError(f"the gate must be [B, T, H] or [B, T, H, K], got {tuple(g.shape)}")
    check_varlen(q, initial_state, cu_seqlens)
    if scale is None:
        scale = K**-0.5

    out_dtype = v.dtype
    dtype = torch.float64 if v.dtype == torch.float64 else torch.float32
    q, k, v = (x.to(dtype) for x in (q, k, v))
    if g is not None:
        g = g.to(dtype)
        g = g[..., None] if g.ndim == 3 else g
    h0 = None
    if initial_state is not None:
        h0 = initial_state.to(dtype)
        h0 = h0.transpose(-1, -2) if state_v_first else h0

    with torch.autocast(device_type=v.device.type, enabled=False):  # compute in fp32 even inside autocast, as fla
        if cu_seqlens is not None:
            layout = VarlenLayout.from_cu_seqlens(cu_seqlens, T)
            q, k, v = (layout.pad(x) for x in (q, k, v))
            g = None if g is None else layout.pad(g)
            o, S = core(q, k, v, g, scale, h0, **core_kwargs)
            o = layout.unpad(o)
        else:
            o, S = core(q, k, v, g, scale, h0, **core_kwargs)

    final_state = None
    if output_final_state:
        final_state = S.transpose(-1, -2) if state_v_first else S
    return o.to(out_dtype), final_state
