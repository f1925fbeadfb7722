"""CPU RWKV-7 kernels vs fla's own references: the DPLR state update (`chunk_rwkv7`, `fused_recurrent_rwkv7`,
`fused_mul_recurrent_rwkv7`) vs `fla.ops.generalized_delta_rule.dplr.naive.dplr_recurrence` (outputs, final
states, gradients incl. the initial state and through the final state, strong decays, `cu_seqlens`); the token
shift vs `token_shift_ref` and its cache written out; the fused helpers vs `torch_addcmul_rwkv7`, `k_update_ref`,
`gate_output_correction_ref`."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fla.modules.token_shift import token_shift_ref
from fla.ops.generalized_delta_rule.dplr.naive import dplr_recurrence
from fla.ops.rwkv7.fused_addcmul import torch_addcmul_rwkv7
from fla.ops.rwkv7.fused_k_update import k_update_ref
from fla.ops.rwkv7.gate_output_correction import gate_output_correction_ref

import refine.models  # noqa: F401  (installs the CPU kernels on this CUDA-less machine)
from refine.models import cpu_kernels as ck

TOL = 1e-5
NAMES = ["r", "w", "k", "v", "kk", "ag", "h0"]


def _inputs(B, T, H, K, V, seed, w_low=-0.6065):
    gen = torch.Generator().manual_seed(seed)
    t = {
        "r": torch.randn(B, T, H, K, generator=gen),
        "w": w_low * torch.rand(B, T, H, K, generator=gen),  # RWKV-7's log decays lie in (-0.6065, 0)
        "k": torch.randn(B, T, H, K, generator=gen) * 0.5,
        "v": torch.randn(B, T, H, V, generator=gen),
        "kk": F.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1),
        "ag": torch.rand(B, T, H, K, generator=gen),
        "h0": torch.randn(B, H, K, V, generator=gen) * 0.5,
        "w_o": torch.randn(B, T, H, V, generator=gen),
        "w_s": torch.randn(B, H, K, V, generator=gen),
    }
    for name in NAMES:
        t[name].requires_grad_(True)
    return t


def _grads(o, s, t):
    return torch.autograd.grad((o * t["w_o"]).sum() + (s * t["w_s"]).sum(), [t[n] for n in NAMES])


def _assert_close(a, b, what, tol=TOL):
    """Within `tol` absolute, or relative to the reference's largest magnitude when that exceeds 1."""
    err, scale = (a - b).abs().max().item(), max(1.0, b.abs().max().item())
    assert err < tol * scale, f"{what}: max abs error {err:.3g} >= {tol} x {scale:.3g}"


def _reference(t, sl=slice(None), rows=slice(None)):
    """fla's head-first DPLR recurrence (it scales queries by K^-0.5; RWKV-7 uses scale 1: undo it)."""
    r, w, k, v, kk, ag = (t[n][:, sl].transpose(1, 2) for n in ("r", "w", "k", "v", "kk", "ag"))
    o, S = dplr_recurrence(r * r.shape[-1] ** 0.5, k, v, -kk, kk * ag, w, initial_state=t["h0"][rows])
    return o.transpose(1, 2), S


def _run(kernel, t, **kw):
    args = dict(initial_state=t["h0"], output_final_state=True, **kw)
    if kernel == "chunk":
        return ck.chunk_rwkv7(t["r"], t["w"], t["k"], t["v"], -t["kk"], t["kk"] * t["ag"], scale=1.0, **args)
    if kernel == "fused_recurrent":
        return ck.fused_recurrent_rwkv7(t["r"], t["w"], t["k"], t["v"], -t["kk"], t["kk"] * t["ag"], scale=1.0,
                                        **args)
    return ck.fused_mul_recurrent_rwkv7(t["r"], t["w"], t["k"], t["v"], t["kk"], t["ag"], scale=1.0, **args)


KERNELS = ["chunk", "fused_recurrent", "fused_mul_recurrent"]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("T", [45, 5])
def test_rwkv7_state_update_matches_fla_naive(kernel, T):
    t = _inputs(2, T, 2, 16, 8, seed=T)
    o, s = _run(kernel, t)
    ro, rs = _reference(t)
    _assert_close(o, ro, "o")
    _assert_close(s, rs, "final state")
    for n, a, b in zip(NAMES, _grads(o, s, t), _grads(ro, rs, t)):
        _assert_close(a, b, f"d{n}")


def test_rwkv7_strong_decays_stay_finite_and_exact():
    """Log decays to -30 per key and token (a factorised exp(G_i) * exp(-G_j) would overflow within a chunk)."""
    t = _inputs(1, 40, 1, 8, 8, seed=3, w_low=-30.0)
    o, s = _run("chunk", t)
    ro, rs = _reference(t)
    _assert_close(o, ro, "o")
    _assert_close(s, rs, "final state")
    for n, a, b in zip(NAMES, _grads(o, s, t), _grads(ro, rs, t)):
        assert torch.isfinite(a).all(), n
        _assert_close(a, b, f"d{n}")


@pytest.mark.parametrize("kernel", ["chunk", "fused_mul_recurrent"])
def test_rwkv7_varlen_equals_per_sequence_reference(kernel):
    lengths, H = [37, 20, 5, 1], 2
    N = len(lengths)
    t = _inputs(1, sum(lengths), H, 8, 8, seed=21)
    t["h0"] = (torch.randn(N, H, 8, 8) * 0.5).requires_grad_(True)
    t["w_s"] = torch.randn(N, H, 8, 8)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    o, s = _run(kernel, t, cu_seqlens=cu)
    parts = [_reference(t, slice(int(cu[n]), int(cu[n + 1])), slice(n, n + 1)) for n in range(N)]
    ro, rs = torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 0)
    _assert_close(o, ro, "o")
    _assert_close(s, rs, "final states")
    for n, a, b in zip(NAMES, _grads(o, s, t), _grads(ro, rs, t)):
        _assert_close(a, b, f"d{n}")


def test_token_shift_matches_fla_reference_and_carries_its_cache():
    x = torch.randn(2, 7, 5, requires_grad=True)
    delta, last = ck.token_shift(x, output_cache=True)
    _assert_close(delta, token_shift_ref(x), "delta")
    _assert_close(last, x[:, -1], "cache out")
    cache = torch.randn(2, 5, requires_grad=True)
    delta_c = ck.token_shift(x, cache=cache)
    _assert_close(delta_c[:, 0], cache - x[:, 0], "first token reads the cache")
    _assert_close(delta_c[:, 1:], delta[:, 1:], "later tokens")
    assert torch.autograd.grad(delta_c[:, 0].sum(), cache)[0].eq(1).all()
    # packed: sequences restart (own cache row, or zeros), never reading the previous sequence's last token
    cu = torch.tensor([0, 3, 4, 7])
    xp = torch.randn(1, 7, 5)
    _assert_close(ck.token_shift(xp, cu_seqlens=cu), token_shift_ref(xp, cu), "packed delta")
    packed_cache = torch.randn(3, 5)
    dp, lp = ck.token_shift(xp, cu_seqlens=cu, cache=packed_cache, output_cache=True)
    for n, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        alone, last_alone = ck.token_shift(xp[:, s:e], cache=packed_cache[n:n + 1], output_cache=True)
        _assert_close(dp[:, s:e], alone, f"packed seq {n}")
        _assert_close(lp[n], last_alone[0], f"packed cache {n}")


def test_fused_helpers_match_fla_references():
    gen = torch.Generator().manual_seed(0)
    h, d = (torch.randn(2, 4, 8, generator=gen) for _ in range(2))
    mixes = [torch.randn(8, generator=gen) for _ in range(6)]
    for ours, ref in zip(ck.fused_addcmul_rwkv7(h, d, *mixes), torch_addcmul_rwkv7(h, d, *mixes)):
        _assert_close(ours, ref, "addcmul")
    assert ck.fused_addcmul_rwkv7(h, d, *mixes[:5])[-1] is None
    k, a, ka = torch.randn(2, 4, 8), torch.rand(2, 4, 8), torch.randn(8)
    _assert_close(ck.fused_k_rwkv7(k, a, ka), k_update_ref(k, a, ka), "k update")
    o, g = torch.randn(2, 4, 8), torch.randn(2, 4, 8)
    r, kk, v, r_k = torch.randn(2, 4, 2, 4), torch.randn(2, 4, 2, 4), torch.randn(2, 4, 2, 4), torch.randn(2, 4)
    _assert_close(ck.gate_output_correction(o, r, kk, r_k, v, g), gate_output_correction_ref(o, r, kk, r_k, v, g),
                  "gate output correction")
