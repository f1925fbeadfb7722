"""Fast-weight recurrence checks (spec lact-model.md §8 items 3-7, 9-11, 13) against an independent token-loop
reference, autograd, and hand-derived properties. All in float64.

Shapes: the default fast weight is rectangular (d_h = 5 != d_in = 6, i.e. inter_multi != 1); the per-channel
variants use lr_dim = d_in = d_h (upstream's rate tensor must broadcast over both K and the hidden activation)."""

import math

import pytest
import torch
import torch.nn.functional as F

from refine.models.lact.ttt_ops import (
    FastWeightState,
    block_causal_lact_swiglu,
    fast_weight_grads,
    zeropower_via_newtonschulz5,
)

D_IN, D_H = 6, 5


def _inputs(n=3, length=20, seed=0, mom=True, per_channel=False):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    d_h = D_IN if per_channel else D_H
    w0, w1, w2 = r(n, d_h, D_IN) / 2, r(n, D_IN, d_h) / 2, r(n, d_h, D_IN) / 2
    q, k, v = r(n, length, D_IN), r(n, length, D_IN), r(n, length, D_IN)
    lr = torch.rand(n, length, 3 * (D_IN if per_channel else 1), generator=g, dtype=torch.float64) * 0.5
    momentum = torch.rand(n, length, 1, generator=g, dtype=torch.float64) if mom else None
    return (w0, w1, w2), q, k, v, lr, momentum


def _silu_prime(x):
    s = torch.sigmoid(x)
    return s + x * s * (1 - s)


def token_loop_reference(ws, q, k, v, lr, momentum, chunk, use_muon=False, prenorm=False, lengths=None):
    """Per row, per token: y_t with the current W, rank-1 gradient contributions accumulated into the open chunk;
    the chunk is folded in (momentum, Muon, add, renorm) when the next token arrives. Returns (y, final Ws)."""
    n, length, _ = q.shape
    y = torch.zeros(n, length, D_IN, dtype=q.dtype)
    r = lr.shape[-1] // 3  # rates per matrix: 1, or one per column
    finals = []
    for row in range(n):
        row_len = length if lengths is None else int(lengths[row])
        w = [ws[m][row].clone() for m in range(3)]
        acc = [x.clone() for x in w]
        rho = [x.norm(dim=1, keepdim=True) for x in w]
        mom_buf = [torch.zeros_like(x) for x in w]
        delta = [torch.zeros_like(x) for x in w]
        mom_sum = 0.0
        for t in range(length):
            if 0 < t < row_len and t % chunk == 0:
                if momentum is not None:
                    mbar = mom_sum / chunk
                    delta = [d + mbar * mb for d, mb in zip(delta, mom_buf)]
                    mom_buf = [d.clone() for d in delta]
                if use_muon:
                    delta = [zeropower_via_newtonschulz5(d[None], torch.float64)[0] for d in delta]
                if prenorm:
                    acc = [a + d for a, d in zip(acc, delta)]
                    w = [a / (a.norm(dim=1, keepdim=True) + 1e-5) * p for a, p in zip(acc, rho)]
                else:
                    w = [(x + d) / ((x + d).norm(dim=1, keepdim=True) + 1e-5) * p for x, d, p in zip(w, delta, rho)]
                delta = [torch.zeros_like(x) for x in w]
                mom_sum = 0.0
            x = q[row, t]
            y[row, t] = w[1] @ (F.silu(w[0] @ x) * (w[2] @ x))
            kk, vv = k[row, t], v[row, t]
            g, u, e = w[0] @ kk, w[2] @ kk, w[1].T @ vv
            eta = [lr[row, t, m * r : (m + 1) * r] for m in range(3)]  # [r], broadcast over the columns
            delta[1] += eta[1] * torch.outer(vv, F.silu(g) * u)
            delta[0] += eta[0] * torch.outer(e * u * _silu_prime(g), kk)
            delta[2] += eta[2] * torch.outer(e * F.silu(g), kk)
            if momentum is not None:
                mom_sum += float(momentum[row, t, 0])
        finals.append(w)
    return y, [torch.stack([f[m] for f in finals]) for m in range(3)]


def _chunked(ws, q, k, v, lr, momentum, chunk, use_muon=False, prenorm=False, lengths=None):
    state = FastWeightState.initial(*ws, use_momentum=momentum is not None, prenorm=prenorm)
    return block_causal_lact_swiglu(state, q, k, v, lr, momentum, chunk, use_muon, lengths=lengths,
                                    muon_dtype=torch.float64)


@pytest.mark.parametrize("length", [5, 8, 9, 16, 21])
@pytest.mark.parametrize(
    "variant", ["momentum", "plain", "muon", "prenorm", "per_channel", "per_channel_muon", "per_channel_prenorm"]
)
def test_chunked_equals_token_loop(length, variant):
    ws, q, k, v, lr, mom = _inputs(length=length, mom=variant != "plain", per_channel=variant.startswith("per_ch"))
    kw = dict(use_muon=variant.endswith("muon"), prenorm=variant.endswith("prenorm"))
    y, state = _chunked(ws, q, k, v, lr, mom, 4, **kw)
    y_ref, w_ref = token_loop_reference(ws, q, k, v, lr, mom, 4, **kw)
    assert (y - y_ref).abs().max() < 1e-10
    for got, want in zip((state.w0, state.w1, state.w2), w_ref):
        assert (got - want).abs().max() < 1e-10


def test_per_row_lengths_equal_separate_runs():
    ws, q, k, v, lr, mom = _inputs(n=3, length=19)
    lengths = torch.tensor([19, 9, 13])
    y, state = _chunked(ws, q, k, v, lr, mom, 4, lengths=lengths)
    y_ref, w_ref = token_loop_reference(ws, q, k, v, lr, mom, 4, lengths=lengths)
    for row, n in enumerate(lengths.tolist()):
        assert (y[row, :n] - y_ref[row, :n]).abs().max() < 1e-10
        sub = [w[row : row + 1] for w in ws]
        y_alone, s_alone = _chunked(sub, q[row : row + 1, :n], k[row : row + 1, :n], v[row : row + 1, :n],
                                    lr[row : row + 1, :n], mom[row : row + 1, :n], 4)
        assert (y[row, :n] - y_alone[0]).abs().max() < 1e-12
        assert (state.w1[row] - s_alone.w1[0]).abs().max() < 1e-12
        assert (state.w1[row] - w_ref[1][row]).abs().max() < 1e-10


def test_grads_match_autograd_of_dot_product_loss():
    ws, _, k, v, lr, _ = _inputs(n=2, length=7)
    closed = fast_weight_grads(*ws, k, v, lr)
    for m in range(3):
        params = [w.clone().requires_grad_(m == i) for i, w in enumerate(ws)]
        w0, w1, w2 = params
        f_k = (F.silu(k @ w0.transpose(1, 2)) * (k @ w2.transpose(1, 2))) @ w1.transpose(1, 2)
        loss = (lr[..., m] * -(v * f_k).sum(-1)).sum()  # Σ_t η_m,t · ℓ_t, ℓ_t = −<v_t, f_W(k_t)>
        (grad,) = torch.autograd.grad(loss, params[m])
        assert (closed[m] - (-grad)).abs().max() < 1e-12


def test_per_channel_grads_match_per_token_autograd():
    """lr_dim > 1: ΔW_m[:, i] = Σ_t η_m,t[i] · (−∂ℓ_t/∂W_m)[:, i], each token's gradient taken by autograd."""
    ws, _, k, v, lr, _ = _inputs(n=2, length=5, per_channel=True)
    closed = fast_weight_grads(*ws, k, v, lr)
    for m in range(3):
        want = torch.zeros_like(ws[m])
        for t in range(k.shape[1]):
            params = [w.clone().requires_grad_(m == i) for i, w in enumerate(ws)]
            w0, w1, w2 = params
            kt, vt = k[:, t : t + 1], v[:, t : t + 1]
            f_k = (F.silu(kt @ w0.transpose(1, 2)) * (kt @ w2.transpose(1, 2))) @ w1.transpose(1, 2)
            (grad,) = torch.autograd.grad(-(vt * f_k).sum(), params[m])  # Σ over rows of ℓ_t = −<v_t, f_W(k_t)>
            want -= lr[:, t, None, m * D_IN : (m + 1) * D_IN] * grad
        assert (closed[m] - want).abs().max() < 1e-12


def test_per_channel_with_equal_channels_equals_scalar_rate():
    ws, q, k, v, lr, mom = _inputs(length=13, per_channel=True)
    scalar = lr[..., ::D_IN]  # one rate per matrix
    y_scalar, s_scalar = _chunked(ws, q, k, v, scalar, mom, 4)
    y_channels, s_channels = _chunked(ws, q, k, v, scalar.repeat_interleave(D_IN, dim=-1), mom, 4)
    assert torch.equal(y_scalar, y_channels) and torch.equal(s_scalar.w1, s_channels.w1)
    y_diff, _ = _chunked(ws, q, k, v, lr, mom, 4)  # distinct channels do change the result
    assert (y_diff[:, 4:] - y_scalar[:, 4:]).abs().max() > 1e-3


def test_per_channel_update_by_hand():
    """One token (d = 2, W0 = W1 = W2 = I) with per-column rates, worked out entry by entry."""
    silu = lambda x: x / (1 + math.exp(-x))  # noqa: E731
    dsilu = lambda x: silu(x) + (1 - silu(x)) / (1 + math.exp(-x))  # noqa: E731  σ(x)(1 + x(1 − σ(x)))
    kk, vv, qq = [1.0, 2.0], [3.0, -1.0], [0.5, -0.25]
    eta = [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]]  # η for W0, W1, W2; one value per column
    # W = I: gate g = up u = k, hidden s = silu(k)·k, e = W1ᵀ v = v
    dw0 = [[vv[h] * kk[h] * dsilu(kk[h]) * kk[i] * eta[0][i] for i in range(2)] for h in range(2)]
    dw1 = [[vv[o] * silu(kk[h]) * kk[h] * eta[1][h] for h in range(2)] for o in range(2)]
    dw2 = [[vv[h] * silu(kk[h]) * kk[i] * eta[2][i] for i in range(2)] for h in range(2)]
    new = []
    for dw in (dw0, dw1, dw2):  # W + ΔW, rows renormalised to the initial row norm 1
        rows = [[(h == i) + dw[h][i] for i in range(2)] for h in range(2)]
        new.append([[x / (math.hypot(*row) + 1e-5) for x in row] for row in rows])
    a = [silu(sum(new[0][h][i] * qq[i] for i in range(2))) * sum(new[2][h][i] * qq[i] for i in range(2))
         for h in range(2)]
    y1 = [sum(new[1][o][h] * a[h] for h in range(2)) for o in range(2)]

    t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    eye = torch.eye(2, dtype=torch.float64)[None]
    lr = t([sum(eta, [])] * 2)[None]  # [1, 2 tokens, 3·2]
    q, k, v = t([[9.0, 9.0], qq])[None], t([kk, [7.0, 7.0]])[None], t([vv, [7.0, 7.0]])[None]
    grads = fast_weight_grads(eye, eye, eye, k[:, :1], v[:, :1], lr[:, :1])
    for got, want in zip(grads, (dw0, dw1, dw2)):
        assert (got[0] - t(want)).abs().max() < 1e-14
    y, state = _chunked((eye, eye, eye), q, k, v, lr, None, 1)  # token 0 updates, token 1 is applied
    for got, want in zip((state.w0, state.w1, state.w2), new):
        assert (got[0] - t(want)).abs().max() < 1e-14
    assert (y[0, 1] - t(y1)).abs().max() < 1e-14


def test_no_update_when_length_at_most_chunk():
    ws, q, k, v, lr, mom = _inputs(length=8)
    y, _ = _chunked(ws, q, k, v, lr, mom, 8)
    expected = (F.silu(q @ ws[0].transpose(1, 2)) * (q @ ws[2].transpose(1, 2))) @ ws[1].transpose(1, 2)
    assert (y - expected).abs().max() < 1e-12
    y2, _ = _chunked(ws, q, torch.randn_like(k), torch.randn_like(v), lr * 3, torch.rand_like(mom), 32)
    assert torch.equal(y, y2)


def test_chunk_boundaries_and_prefix_consistency():
    ws, q, k, v, lr, mom = _inputs(length=13)
    y_kc, s_kc = _chunked(ws, q[:, :12], k[:, :12], v[:, :12], lr[:, :12], mom[:, :12], 4)
    y_full, _ = _chunked(ws, q, k, v, lr, mom, 4)
    assert (y_full[:, :12] - y_kc).abs().max() < 1e-12  # tokens < kC unchanged by the partial tail
    # L = kC: the final full chunk is apply-only (k-1 = 2 updates), same state as L = 2C + 1 minus one token
    _, s_9 = _chunked(ws, q[:, :9], k[:, :9], v[:, :9], lr[:, :9], mom[:, :9], 4)
    assert torch.equal(s_kc.w0, s_9.w0)
    # L = C: no update, L = C + 1: exactly one
    _, s_c = _chunked(ws, q[:, :4], k[:, :4], v[:, :4], lr[:, :4], mom[:, :4], 4)
    _, s_c1 = _chunked(ws, q[:, :5], k[:, :5], v[:, :5], lr[:, :5], mom[:, :5], 4)
    assert torch.equal(s_c.w1, ws[1]) and not torch.allclose(s_c1.w1, ws[1])
    for p in range(1, 13):
        y_p, _ = _chunked(ws, q[:, :p], k[:, :p], v[:, :p], lr[:, :p], mom[:, :p], 4)
        assert (y_p - y_full[:, :p]).abs().max() < 1e-12


def test_shifted_block_causality():
    ws, q, k, v, lr, mom = _inputs(length=12)
    y, _ = _chunked(ws, q, k, v, lr, mom, 4)
    s = 5  # chunk 1 = tokens 4..7
    for name in ("k", "v", "lr", "mom"):
        args = dict(k=k.clone(), v=v.clone(), lr=lr.clone(), mom=mom.clone())
        args[name][:, s] += 0.5
        y2, _ = _chunked(ws, q, args["k"], args["v"], args["lr"], args["mom"], 4)
        changed = (y2 - y).abs().amax(dim=(0, 2)) > 1e-12
        assert not changed[:8].any(), name
        assert changed[8:].all(), name
    q2 = q.clone()
    q2[:, s] += 0.5
    y2, _ = _chunked(ws, q2, k, v, lr, mom, 4)
    changed = (y2 - y).abs().amax(dim=(0, 2)) > 0
    assert changed.nonzero().flatten().tolist() == [s]


def test_renorm_invariant():
    ws, q, k, v, lr, mom = _inputs(length=5, mom=False)
    _, state = _chunked(ws, q, k, v, lr, None, 4)
    grads = fast_weight_grads(*ws, k[:, :4], v[:, :4], lr[:, :4])
    for w_init, dw, got in zip(ws, grads, (state.w0, state.w1, state.w2)):
        pre = (w_init + dw).norm(dim=2)
        rho = w_init.norm(dim=2)
        assert (got.norm(dim=2) - rho * pre / (pre + 1e-5)).abs().max() < 1e-12


def test_momentum_properties():
    ws, q, k, v, lr, mom = _inputs(length=12)
    y_zero, _ = _chunked(ws, q, k, v, lr, torch.zeros_like(mom), 4)
    y_none, _ = _chunked(ws, q, k, v, lr, None, 4)
    assert (y_zero - y_none).abs().max() < 1e-14
    y_m, _ = _chunked(ws, q[:, :8], k[:, :8], v[:, :8], lr[:, :8], mom[:, :8], 4)  # one update
    y_n, _ = _chunked(ws, q[:, :8], k[:, :8], v[:, :8], lr[:, :8], None, 4)
    assert (y_m - y_n).abs().max() < 1e-14
    # three chunks: second update = ΔW(1) + m̄1·ΔW(0) before renorm
    _, s1 = _chunked(ws, q[:, :5], k[:, :5], v[:, :5], lr[:, :5], mom[:, :5], 4)
    _, s2 = _chunked(ws, q[:, :9], k[:, :9], v[:, :9], lr[:, :9], mom[:, :9], 4)
    d0 = fast_weight_grads(*ws, k[:, :4], v[:, :4], lr[:, :4])
    d1 = fast_weight_grads(s1.w0, s1.w1, s1.w2, k[:, 4:8], v[:, 4:8], lr[:, 4:8])
    mbar = mom[:, 4:8].mean(dim=1, keepdim=True)
    for m, (w_prev, w_init, got) in enumerate(zip((s1.w0, s1.w1, s1.w2), ws, (s2.w0, s2.w1, s2.w2))):
        pre = w_prev + d1[m] + mbar * d0[m]  # the buffer holds the first update (its own buffer started at 0)
        want = pre / (pre.norm(dim=2, keepdim=True) + 1e-5) * w_init.norm(dim=2, keepdim=True)
        assert (got - want).abs().max() < 1e-12


def test_newton_schulz():
    g = torch.randn(3, 12, 7, dtype=torch.float64)
    x = zeropower_via_newtonschulz5(g, torch.float64)
    sv = torch.linalg.svdvals(x)
    assert sv.min() > 0.7 and sv.max() < 1.2
    x_t = zeropower_via_newtonschulz5(g.transpose(1, 2).contiguous(), torch.float64)
    assert (x - x_t.transpose(1, 2)).abs().max() < 1e-12
    big = torch.randn(2, 64, 64)
    sv_bf16 = torch.linalg.svdvals(zeropower_via_newtonschulz5(big).float())  # upstream bf16 path
    assert sv_bf16.median() > 0.6 and sv_bf16.max() < 1.3


def test_batch_rows_independent():
    ws, q, k, v, lr, mom = _inputs(n=3, length=10)
    y, _ = _chunked(ws, q, k, v, lr, mom, 4)
    y1, _ = _chunked([w[1:2] for w in ws], q[1:2], k[1:2], v[1:2], lr[1:2], mom[1:2], 4)
    assert (y[1:2] - y1).abs().max() < 1e-13
