"""The (gated) delta rule in plain PyTorch: a chunkwise WY/UT-transform form and a token-by-token recurrence.

State convention (fla's default, key-first): `S` has shape `[B, H, K, V]`, and for every token t

    S_t = exp(g_t) * S_{t-1}                      (g_t: log decay; 0 for the ungated delta rule)
    u_t = beta_t * (v_t - S_t^T k_t)              (the delta-rule "new value", computed after the decay)
    S_t = S_t + k_t u_t^T
    o_t = S_t^T (scale * q_t)

Inputs here are already l2-normalised (if asked), expanded for grouped value heads, right-padded and cast to the
compute dtype; `run_delta_rule` does that bookkeeping around the two cores. Everything is ordinary autograd, so
gradients flow to q, k, v, beta, g, the initial state and through the returned final state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from refine.models.cpu_kernels.banner import announce_once
from refine.models.cpu_kernels.varlen import VarlenLayout

L2NORM_EPS = 1e-6  # fla's in-kernel q/k l2norm: x / sqrt(sum(x^2) + 1e-6)


def l2norm(x: torch.Tensor, eps: float = L2NORM_EPS, output_dtype: torch.dtype | None = None) -> torch.Tensor:
    """fla's `l2norm`: `x / sqrt(sum(x^2, -1) + eps)`, computed in at least fp32, returned in `output_dtype`."""
    announce_once()
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    y = xf * torch.rsqrt(xf.square().sum(-1, keepdim=True) + eps)
    return y.to(x.dtype if output_dtype is None else output_dtype)


def chunk_delta_core(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    g: torch.Tensor | None,
    scale: float,
    initial_state: torch.Tensor | None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunkwise (gated) delta rule: `q,k [B,T,H,K]`, `v [B,T,H,V]`, `beta/g [B,T,H]` -> `(o [B,T,H,V], S [B,H,K,V])`.

    Within a chunk of C tokens the sequential updates are solved at once with the UT transform
    `(I + A)^{-1}`, `A_ij = beta_i k_i.k_j exp(G_i - G_j)` for i > j (G: in-chunk cumulative log decay), so the
    Python loop runs over T / C chunks only.
    """
    B, T, H, K = k.shape
    V = v.shape[-1]
    C = chunk_size
    pad = (-T) % C
    if pad:
        # zero keys/values/betas/log-decays after the end leave the outputs and the state unchanged.
        q, k, v = (F.pad(x, (0, 0, 0, 0, 0, pad)) for x in (q, k, v))
        beta = F.pad(beta, (0, 0, 0, pad))
        g = None if g is None else F.pad(g, (0, 0, 0, pad))
    n_chunks = (T + pad) // C

    def chunked(x: torch.Tensor) -> torch.Tensor:  # [B, T, H, ...] -> [B, H, n, C, ...]
        x = x.reshape(B, n_chunks, C, H, *x.shape[3:])
        return x.movedim(3, 1)

    q, k, v, beta = chunked(q) * scale, chunked(k), chunked(v), chunked(beta)
    strictly_lower = torch.ones(C, C, dtype=torch.bool, device=q.device).tril(-1)
    lower = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    if g is not None:
        # Every decay factor is a sum of same-sign log decays taken directly (never a difference of two long
        # cumulative sums, which loses ~|G| * eps in the exponent), as in fla's recurrent reference.
        gc = chunked(g)  # [B, H, n, C]
        G = gc.cumsum(-1)  # sum_{l <= i} g_l
        to_end = F.pad(gc.flip(-1).cumsum(-1).flip(-1)[..., 1:], (0, 1))  # sum_{l > j} g_l
        steps = gc[..., :, None].expand(*gc.shape, C) * strictly_lower  # [.., l, j] = g_l for l > j
        segment = steps.cumsum(-2)  # [.., i, j] = sum_{j < l <= i} g_l
        decay = torch.where(lower, segment, torch.zeros_like(segment)).exp() * lower  # exp(G_i - G_j), i >= j
        q_decayed = q * G.exp()[..., None]
        k_to_end = k * to_end.exp()[..., None]
        chunk_decay = G[..., -1].exp()[..., None, None]  # [B, H, n, 1, 1]
        k_decayed = k * G.exp()[..., None]
    else:
        decay = lower.to(q.dtype)
        q_decayed, k_to_end, chunk_decay, k_decayed = q, k, None, k

    k_beta = k * beta[..., None]
    a = (k_beta @ k.transpose(-1, -2)) * decay * strictly_lower
    unit_lower = a + torch.eye(C, dtype=a.dtype, device=a.device)
    # u = (I + A)^{-1} diag(beta) v and w = (I + A)^{-1} diag(beta) (exp(G) k): the WY representation.
    u = torch.linalg.solve_triangular(unit_lower, v * beta[..., None], upper=False, unitriangular=True)
    w = torch.linalg.solve_triangular(unit_lower, k_decayed * beta[..., None], upper=False, unitriangular=True)
    qk = (q @ k.transpose(-1, -2)) * decay

    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state
    outputs = []
    for i in range(n_chunks):
        v_new = u[:, :, i] - w[:, :, i] @ S
        outputs.append(q_decayed[:, :, i] @ S + qk[:, :, i] @ v_new)
        S_carried = S if chunk_decay is None else S * chunk_decay[:, :, i]
        S = S_carried + k_to_end[:, :, i].transpose(-1, -2) @ v_new
    o = torch.stack(outputs, dim=2)  # [B, H, n, C, V]
    o = o.movedim(1, 3).reshape(B, n_chunks * C, H, V)[:, :T]
    return o, S


def recurrent_delta_core(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    g: torch.Tensor | None,
    scale: float,
    initial_state: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-by-token (gated) delta rule (for decoding). `beta` may be per head `[B,T,H]` or per channel `[B,T,H,V]`."""
    B, T, H, K = k.shape
    V = v.shape[-1]
    if beta.ndim == 3:
        beta = beta[..., None]
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state
    outputs = []
    for t in range(T):
        if g is not None:
            S = S * g[:, t].exp()[..., None, None]
        k_t = k[:, t]
        u_t = beta[:, t] * (v[:, t] - torch.einsum("bhk,bhkv->bhv", k_t, S))
        S = S + k_t[..., :, None] * u_t[..., None, :]
        outputs.append(torch.einsum("bhk,bhkv->bhv", q[:, t] * scale, S))
    o = torch.stack(outputs, dim=1) if outputs else v.new_zeros(B, 0, H, V)
    return o, S


# Below this many tokens per sequence the token loop is as cheap as the chunk form's set-up.
RECURRENT_MAX_TOKENS = 16


def auto_delta_core(q, k, v, beta, g, scale, initial_state):
    """The recurrent stand-in's core: the token loop for short (decoding) inputs, else the chunk form.

    Both compute the same function; fla's layers route every call with q_len <= 64 (training included) to the
    recurrent op, and the chunk form needs T/64 Python steps instead of T. Per-channel betas need the loop.
    """
    if q.shape[1] < RECURRENT_MAX_TOKENS or beta.ndim == 4:
        return recurrent_delta_core(q, k, v, beta, g, scale, initial_state)
    return chunk_delta_core(q, k, v, beta, g, scale, initial_state)


def run_delta_rule(
    core,
    *,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    g: torch.Tensor | None,
    scale: float | None,
    initial_state: torch.Tensor | None,
    output_final_state: bool,
    use_qk_l2norm_in_kernel: bool,
    cu_seqlens: torch.Tensor | None,
    state_v_first: bool = False,
    p: torch.Tensor | None = None,
    **core_kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """fla's calling convention around a core: validation, dtype, qk l2norm, grouped value heads, varlen, layout.

    `p` (Comba's prediction keys, shaped as `k`) gets the keys' treatment and reaches the core as `p=`.

    The output has `v`'s dtype; the final state is fp32 as in fla (fp64 when the inputs are fp64).
    """
    announce_once()
    B, T, H, K = k.shape
    HV = v.shape[2]
    if q.shape != k.shape:
        raise ValueError(f"q and k must have the same shape, got {tuple(q.shape)} and {tuple(k.shape)}")
    if v.shape[:2] != (B, T) or HV % H != 0:
        raise ValueError(f"v must be [B, T, HV, V] with HV a multiple of H={H}, got {tuple(v.shape)}")
    if cu_seqlens is not None:
        if B != 1:
            raise ValueError(f"The batch size is expected to be 1 rather than {B} when using `cu_seqlens`.")
        if initial_state is not None and initial_state.shape[0] != len(cu_seqlens) - 1:
            raise ValueError(
                f"The number of initial states is expected to be equal to the number of input sequences, "
                f"i.e., {len(cu_seqlens) - 1} rather than {initial_state.shape[0]}."
            )
    if scale is None:
        scale = K**-0.5

    out_dtype = v.dtype
    dtype = torch.float64 if v.dtype == torch.float64 else torch.float32
    q, k, v, beta = (x.to(dtype) for x in (q, k, v, beta))
    p = None if p is None else p.to(dtype)
    g = None if g is None else g.to(dtype)
    if use_qk_l2norm_in_kernel:
        q, k = l2norm(q, output_dtype=dtype), l2norm(k, output_dtype=dtype)
        p = None if p is None else l2norm(p, output_dtype=dtype)
    if HV != H:  # grouped value heads: value head i reads query/key head i // (HV // H)
        q, k = (x.repeat_interleave(HV // H, dim=2) for x in (q, k))
        p = None if p is None else p.repeat_interleave(HV // H, dim=2)

    h0 = None
    if initial_state is not None:
        h0 = initial_state.to(dtype)
        if state_v_first:
            h0 = h0.transpose(-1, -2)

    # like fla's kernels (autocast_custom_fwd), compute in the chosen dtype even inside an autocast region
    with torch.autocast(device_type=v.device.type, enabled=False):
        if cu_seqlens is not None:
            layout = VarlenLayout.from_cu_seqlens(cu_seqlens, T)
            q, k, v, beta = (layout.pad(x) for x in (q, k, v, beta))
            p = None if p is None else layout.pad(p)
            g = None if g is None else layout.pad(g)
            o, S = core(q, k, v, beta, g, scale, h0, **core_kwargs, **({} if p is None else {"p": p}))
            o = layout.unpad(o)
        else:
            o, S = core(q, k, v, beta, g, scale, h0, **core_kwargs, **({} if p is None else {"p": p}))

    final_state = None
    if output_final_state:
        final_state = S.transpose(-1, -2) if state_v_first else S
    return o.to(out_dtype), final_state
