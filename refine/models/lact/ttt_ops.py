"""Fast-weight (TTT) operations of LaCT: SwiGLU fast weight, its dot-product gradient, the chunked
"apply-then-update" recurrence, and the one-token step used by the decoding cache (spec lact-model.md §4.4).

Shapes: batch and TTT head are merged into one leading dim `n` (index b·H + j).
    W0, W2: [n, d_h, d_in]    W1: [n, d_out, d_h]    q, k: [n, T, d_in]    v: [n, T, d_out]
    lr: [n, T, 3·r] float32, r = lr_dim ∈ {1, d_in = d_h}; columns [m·r, (m+1)·r) are the rates of W0, W1, W2
        (m = 0, 1, 2). With r > 1 the rate is per column (input channel) of each matrix.    momentum: [n, T, 1]
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

RENORM_EPS = 1e-5
L2_EPS = 1e-5
NS5_COEFFS = (
    (4.0848, -6.8946, 2.9270),
    (3.9505, -6.3029, 2.6377),
    (3.7418, -5.5913, 2.3037),
    (2.8769, -3.1427, 1.2046),
    (2.8366, -3.0525, 1.2012),
)


def silu_backprop(x: torch.Tensor) -> torch.Tensor:
    """d silu(x) / dx = σ(x)·(1 + x·(1 − σ(x)))."""
    sig = torch.sigmoid(x)
    return sig * (1 + x * (1 - sig))


def l2_norm(x: torch.Tensor) -> torch.Tensor:
    """x / (‖x‖₂ + 1e-5) over the last dim, in the input dtype."""
    return x / (x.norm(dim=-1, keepdim=True) + L2_EPS)


def zeropower_via_newtonschulz5(g: torch.Tensor, compute_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Muon's 5-step Newton–Schulz orthogonalisation of each matrix in `g` ([n, r, c]).

    Upstream computes in bf16; `compute_dtype` exists so exact-math tests can run it in float64.
    """
    x = g.to(compute_dtype)
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.transpose(-2, -1)
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for a, b, c in NS5_COEFFS:
        gram = x @ x.transpose(-2, -1)
        x = a * x + (b * gram + c * gram @ gram) @ x
    if tall:
        x = x.transpose(-2, -1)
    return x.to(g.dtype)


def fast_weight_apply(w0: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """f_W(x) = W1 · (silu(W0 x) ⊙ (W2 x)) for each row of x ([n, T, d_in] → [n, T, d_out])."""
    dt = x.dtype
    gate = x @ w0.to(dt).transpose(-2, -1)
    hidden = F.silu(gate) * (x @ w2.to(dt).transpose(-2, -1))
    return hidden @ w1.to(dt).transpose(-2, -1)


def fast_weight_grads(w0, w1, w2, k, v, lr):
    """ΔW0, ΔW1, ΔW2 = −∂/∂W Σ_t η_t·(−⟨v_t, f_W(k_t)⟩): the per-token-rate ascent step on the dot-product
    loss. A per-channel rate (lr_dim > 1) scales column i of each token's gradient by η_t[i].

    The rate is folded into the matmul operand in float32 and rounded to the activation dtype (as upstream).
    """
    dt = k.dtype
    gate = k @ w0.to(dt).transpose(-2, -1)  # [n, C, d_h]
    up = k @ w2.to(dt).transpose(-2, -1)
    silu_gate = F.silu(gate)
    hidden = silu_gate * up
    dhidden = v @ w1.to(dt)  # e_t = W1ᵀ v_t, [n, C, d_h]
    dgate = dhidden * up * silu_backprop(gate)
    dup = dhidden * silu_gate
    ct = torch.promote_types(dt, torch.float32)
    lr0, lr1, lr2 = lr.chunk(3, dim=-1)  # [n, C, lr_dim] each; broadcast over k's / hidden's channels
    k0 = (k.to(ct) * lr0).to(dt)
    h1 = (hidden.to(ct) * lr1).to(dt)
    k2 = (k.to(ct) * lr2).to(dt)
    dw1 = v.transpose(-2, -1) @ h1  # [n, d_out, d_h]
    dw0 = dgate.transpose(-2, -1) @ k0  # [n, d_h, d_in]
    dw2 = dup.transpose(-2, -1) @ k2
    return dw0, dw1, dw2


@dataclass
class FastWeightState:
    """Current fast weights of every (batch, head) row, plus what the recurrence carries between chunks.

    `w*` are the weights used for apply and gradient; `acc*` are the unnormalised accumulators of the pre-norm
    variant (None for post-norm); `mom*` are the momentum buffers (None without momentum); `norm*` are the row
    norms of the initial weights that every update renormalises to.
    """

    w0: torch.Tensor
    w1: torch.Tensor
    w2: torch.Tensor
    norm0: torch.Tensor
    norm1: torch.Tensor
    norm2: torch.Tensor
    mom0: torch.Tensor | None = None
    mom1: torch.Tensor | None = None
    mom2: torch.Tensor | None = None
    acc0: torch.Tensor | None = None
    acc1: torch.Tensor | None = None
    acc2: torch.Tensor | None = None

    @classmethod
    def initial(cls, w0, w1, w2, use_momentum: bool, prenorm: bool) -> FastWeightState:
        """State before any update: W = W_init, zero momentum."""
        norms = [w.norm(dim=2, keepdim=True) for w in (w0, w1, w2)]
        state = cls(w0, w1, w2, *norms)
        if use_momentum:
            state.mom0, state.mom1, state.mom2 = (torch.zeros_like(w) for w in (w0, w1, w2))
        if prenorm:
            state.acc0, state.acc1, state.acc2 = w0, w1, w2
        return state

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    def select(self, rows: torch.Tensor) -> FastWeightState:
        """The state of the given rows (index tensor into the leading dim)."""
        return replace(self, **{k: v[rows] for k, v in self.tensors().items()})

    def merged(self, other: FastWeightState, take_other: torch.Tensor) -> FastWeightState:
        """Row-wise choice: `other` where `take_other` ([n] bool) else self."""
        cond = take_other.view(-1, 1, 1)
        return replace(self, **{k: torch.where(cond, getattr(other, k), v) for k, v in self.tensors().items()})

    def scattered(self, rows: torch.Tensor, other: FastWeightState) -> FastWeightState:
        """Self with the given rows replaced by `other` (whose leading dim is len(rows))."""
        out = {}
        for k, v in self.tensors().items():
            v = v.clone()
            v[rows] = getattr(other, k).to(v.dtype)
            out[k] = v
        return replace(self, **out)


def _renorm(w: torch.Tensor, target_norm: torch.Tensor) -> torch.Tensor:
    return w / (w.norm(dim=2, keepdim=True) + RENORM_EPS) * target_norm


def fast_weight_update(
    state: FastWeightState,
    k: torch.Tensor,
    v: torch.Tensor,
    lr: torch.Tensor,
    momentum: torch.Tensor | None,
    use_muon: bool,
    muon_dtype: torch.dtype = torch.bfloat16,
) -> FastWeightState:
    """One chunk update: gradient with the current W, momentum, optional Muon, add, renormalise rows."""
    deltas = list(fast_weight_grads(state.w0, state.w1, state.w2, k, v, lr))
    new = {}
    if momentum is not None:
        mean_mom = momentum.mean(dim=1, keepdim=True)  # [n, 1, 1]
        moms = (state.mom0, state.mom1, state.mom2)
        deltas = [d + mean_mom * m for d, m in zip(deltas, moms, strict=True)]
        new.update(mom0=deltas[0], mom1=deltas[1], mom2=deltas[2])  # buffer holds the pre-Muon value
    if use_muon:
        deltas = [zeropower_via_newtonschulz5(d, muon_dtype) for d in deltas]
    norms = (state.norm0, state.norm1, state.norm2)
    if state.acc0 is not None:  # pre-norm: accumulate unnormalised, use the normalised copy
        accs = [a + d for a, d in zip((state.acc0, state.acc1, state.acc2), deltas, strict=True)]
        ws = [_renorm(a, n) for a, n in zip(accs, norms, strict=True)]
        new.update(acc0=accs[0], acc1=accs[1], acc2=accs[2])
    else:
        ws = [_renorm(w + d, n) for w, d, n in zip((state.w0, state.w1, state.w2), deltas, norms, strict=True)]
    new.update(w0=ws[0], w1=ws[1], w2=ws[2])
    return replace(state, **new)


def block_causal_lact_swiglu(
    state: FastWeightState,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lr: torch.Tensor,
    momentum: torch.Tensor | None,
    chunk_size: int,
    use_muon: bool,
    lengths: torch.Tensor | None = None,
    muon_dtype: torch.dtype = torch.bfloat16,
) -> tuple[torch.Tensor, FastWeightState]:
    """Chunked apply-then-update over a whole sequence (spec §4.4). Returns (y, state after the last update).

    Chunk n is applied with the current weights, then (if it is not the final chunk) used for an update, so a
    chunk's tokens never see their own update. `lengths` ([n] long, optional) gives each row's number of leading
    tokens that belong to it (exact-padding mode): chunk n updates row r only if a token of r follows it,
    i.e. (n+1)·C < lengths[r]. Without `lengths` every row has the full length (official behaviour).
    """
    total = q.shape[1]
    y = torch.empty(v.shape[:2] + (state.w1.shape[1],), dtype=q.dtype, device=q.device)
    for start in range(0, total, chunk_size):
        end = min(start + chunk_size, total)
        y[:, start:end] = fast_weight_apply(state.w0, state.w1, state.w2, q[:, start:end])
        if end >= total:
            break
        mom = None if momentum is None else momentum[:, start:end]
        updated = fast_weight_update(state, k[:, start:end], v[:, start:end], lr[:, start:end], mom, use_muon,
                                     muon_dtype)
        if lengths is None:
            state = updated
        else:
            state = state.merged(updated, end < lengths)
    return y, state
