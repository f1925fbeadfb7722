"""fla's own Triton kernels of the newer families (interpreted on CPU) vs the project's stand-ins, run as
`REFINE_FLA_KERNELS=interpret python tests/models/fla_family_kernel_probe.py OUT.json` (a process of its own:
Triton's interpreter must be chosen before fla is imported; `tests/models/test_fla_family_kernels.py` runs it).

The recurrent (decoding) forms, called as the layers call them, on the same fp32 inputs (these kernels accept
fp32, so both sides compute in fp32): GLA / HGRN2 (value-first state, packed sequences), retention, KDA (in-kernel
gate and beta, grouped value heads), Comba (its read-before-decay order), RWKV-7's state update and token shift,
and the rotary embedding (per-row offsets, a negative one). The chunk forms (fp16, as fla requires; forward and
every gradient) of GLA, retention, KDA, Comba and Gated DeltaProduct; `chunk_rwkv7` does not run under Triton
3.9's interpreter (`Did you forget to add @triton.jit ?` from one of its helpers). Each case records the worst
difference of fla's kernel from the stand-in per output / gradient and the quantity's largest magnitude.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.nn.functional as F

import refine.models  # noqa: F401  (REFINE_FLA_KERNELS=interpret: fla's own kernels, interpreted)
from refine.models import cpu_kernels as ck

B, T, H, K, V = 2, 12, 2, 16, 16


def _randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _compare(fla_out, ours, names) -> dict:
    return {name: {"diff": (a.double() - b.double()).abs().max().item(), "scale": b.abs().max().item()}
            for name, a, b in zip(names, fla_out, ours)}


def gla():
    from fla.ops.gla import fused_recurrent_gla

    q, k, v = _randn(1, 2 * T, H, K, seed=1), _randn(1, 2 * T, H, K, seed=2), _randn(1, 2 * T, H, V, seed=3)
    gk = F.logsigmoid(_randn(1, 2 * T, H, K, seed=4) + 2)
    h0 = _randn(2, H, V, K, seed=5)  # value-first, as GLA / HGRN2 keep it
    args = dict(initial_state=h0, output_final_state=True, state_v_first=True, cu_seqlens=torch.tensor([0, 7, 24]))
    return _compare(fused_recurrent_gla(q, k, v, gk, **args), ck.fused_recurrent_gla(q, k, v, gk, **args),
                    ("o", "final_state"))


def retention():
    from fla.ops.retention import fused_recurrent_retention

    q, k, v, h0 = _randn(B, T, H, K, seed=6), _randn(B, T, H, K, seed=7), _randn(B, T, H, V, seed=8), \
        _randn(B, H, K, V, seed=9)
    args = dict(initial_state=h0, output_final_state=True)
    return _compare(fused_recurrent_retention(q, k, v, **args), ck.fused_recurrent_retention(q, k, v, **args),
                    ("o", "final_state"))


def kda():
    from fla.ops.kda import fused_recurrent_kda

    HV = 2 * H
    q, k, v = _randn(B, T, H, K, seed=10), _randn(B, T, H, K, seed=11), _randn(B, T, HV, V, seed=12)
    g, beta = _randn(B, T, HV, K, seed=13), _randn(B, T, HV, seed=14)
    A_log, dt_bias = torch.rand(HV, generator=torch.Generator().manual_seed(15)) * 2, _randn(HV * K, seed=16)
    args = dict(A_log=A_log, dt_bias=dt_bias, initial_state=_randn(B, HV, V, K, seed=17), output_final_state=True,
                use_qk_l2norm_in_kernel=True, use_gate_in_kernel=True, use_beta_sigmoid_in_kernel=True,
                allow_neg_eigval=True, state_v_first=True)
    return _compare(fused_recurrent_kda(q, k, v, g, beta, **args), ck.fused_recurrent_kda(q, k, v, g, beta, **args),
                    ("o", "final_state"))


def comba():
    from fla.ops.comba import fused_recurrent_comba

    q, k, p = (_randn(B, T, H, K, seed=s) for s in (18, 19, 20))
    v, beta = _randn(B, T, H, V, seed=21), torch.rand(B, T, H, generator=torch.Generator().manual_seed(22))
    g = F.logsigmoid(_randn(B, T, H, seed=23))
    args = dict(initial_state=_randn(B, H, K, V, seed=24), output_final_state=True, use_qk_l2norm_in_kernel=True)
    return _compare(fused_recurrent_comba(q, k, p, v, g, beta, **args),
                    ck.fused_recurrent_comba(q, k, p, v, g, beta, **args), ("o", "final_state"))


def rwkv7():
    from fla.modules.token_shift import token_shift
    from fla.ops.rwkv7 import fused_mul_recurrent_rwkv7

    r, k, v = _randn(B, T, H, K, seed=25), _randn(B, T, H, K, seed=26), _randn(B, T, H, V, seed=27)
    w = -0.6 * torch.rand(B, T, H, K, generator=torch.Generator().manual_seed(28))
    kk, a = F.normalize(_randn(B, T, H, K, seed=29), dim=-1), torch.rand(B, T, H, K)
    args = dict(scale=1.0, initial_state=_randn(B, H, K, V, seed=30), output_final_state=True)
    out = _compare(fused_mul_recurrent_rwkv7(r, w, k, v, kk, a, **args),
                   ck.fused_mul_recurrent_rwkv7(r, w, k, v, kk, a, **args), ("o", "final_state"))
    x, cache = _randn(B, T, 8, seed=31), _randn(B, 8, seed=32)
    shift = _compare(token_shift(x, cache=cache, output_cache=True), ck.token_shift(x, cache=cache, output_cache=True),
                     ("token_shift", "token_shift_cache"))
    return {**out, **shift}


def rotary():
    from fla.modules.rotary.ops import rotary_embedding

    freqs = torch.outer(torch.arange(20.0), torch.rand(4, generator=torch.Generator().manual_seed(33)))
    x, offsets = _randn(B, 9, H, 12, seed=34), torch.tensor([3, -2])  # partial rotary; a left-padded row
    return _compare([rotary_embedding(x, freqs.cos(), freqs.sin(), seqlen_offsets=offsets)],
                    [ck.rotary_embedding(x, freqs.cos(), freqs.sin(), seqlen_offsets=offsets)], ("y",))


# ---- the chunk forms: fla's kernels refuse fp32, so both sides get the same fp16 values; fla computes in fp16
# (fp32 accumulation), the stand-in in fp32 on those values; forward and every gradient ------------------------------
H16, TC = torch.float16, 70  # 70 tokens: one full 64-token chunk and a partial one


def _fp16(*shape, seed, fn=None):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return (x if fn is None else fn(x)).to(H16)


def _chunk_case(fla_fn, ours_fn, inputs: dict) -> dict:
    fla_in = {n: t.detach().clone().requires_grad_(True) for n, t in inputs.items()}
    our_in = {n: t.detach().float().clone().requires_grad_(True) for n, t in inputs.items()}
    o, s = fla_fn(**fla_in)
    ro, rs = ours_fn(**our_in)
    w_o = torch.randn(ro.shape, generator=torch.Generator().manual_seed(0))
    w_s = torch.randn(rs.shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad((o.float() * w_o).sum() + (s.float() * w_s).sum(), list(fla_in.values()))
    ref_grads = torch.autograd.grad((ro * w_o).sum() + (rs * w_s).sum(), list(our_in.values()))
    return _compare([o, s, *grads], [ro, rs, *ref_grads], ("o", "final_state", *(f"d{n}" for n in inputs)))


def chunk_gla_case():
    from fla.ops.gla import chunk_gla

    def call(fn):
        return lambda q, k, v, g, h0: fn(q, k, v, g, initial_state=h0, output_final_state=True)
    return _chunk_case(call(chunk_gla), call(ck.chunk_gla), dict(
        q=_fp16(1, TC, H, K, seed=40), k=_fp16(1, TC, H, K, seed=41), v=_fp16(1, TC, H, V, seed=42),
        g=_fp16(1, TC, H, K, seed=43, fn=lambda x: F.logsigmoid(x + 2)), h0=_fp16(1, H, K, V, seed=44).float()))


def chunk_retention_case():
    from fla.ops.retention import chunk_retention

    def call(fn):
        return lambda q, k, v, h0: fn(q, k, v, initial_state=h0, output_final_state=True)
    return _chunk_case(call(chunk_retention), call(ck.chunk_retention), dict(
        q=_fp16(1, TC, H, K, seed=45), k=_fp16(1, TC, H, K, seed=46), v=_fp16(1, TC, H, V, seed=47),
        h0=_fp16(1, H, K, V, seed=48).float()))


def chunk_kda_case():
    from fla.ops.kda import chunk_kda

    def call(fn):
        return lambda q, k, v, g, beta, h0: fn(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                                              use_qk_l2norm_in_kernel=True)
    return _chunk_case(call(chunk_kda), call(ck.chunk_kda), dict(
        q=_fp16(1, TC, H, K, seed=49), k=_fp16(1, TC, H, K, seed=50), v=_fp16(1, TC, H, V, seed=51),
        g=_fp16(1, TC, H, K, seed=52, fn=lambda x: F.logsigmoid(x + 3)),
        beta=_fp16(1, TC, H, seed=53, fn=torch.sigmoid), h0=_fp16(1, H, K, V, seed=54).float()))


def chunk_comba_case():
    from fla.ops.comba import chunk_comba

    def call(fn):
        return lambda q, k, v, p, g, beta, h0: fn(q, k, v, p, g, beta, initial_state=h0, output_final_state=True,
                                                 use_qk_l2norm_in_kernel=True)
    return _chunk_case(call(chunk_comba), call(ck.chunk_comba), dict(
        q=_fp16(1, TC, H, K, seed=55), k=_fp16(1, TC, H, K, seed=56), v=_fp16(1, TC, H, V, seed=57),
        p=_fp16(1, TC, H, K, seed=58), g=_fp16(1, TC, H, seed=59, fn=F.logsigmoid),
        beta=_fp16(1, TC, H, seed=60, fn=torch.sigmoid), h0=_fp16(1, H, K, V, seed=61).float()))


def chunk_gated_delta_product_case():
    from fla.ops.gated_delta_product import chunk_gated_delta_product

    def call(fn):
        return lambda q, k, v, g, beta, h0: fn(q, k, v, g, beta, num_householder=2, initial_state=h0,
                                              output_final_state=True, use_qk_l2norm_in_kernel=True)
    return _chunk_case(call(chunk_gated_delta_product), call(ck.chunk_gated_delta_product), dict(
        q=_fp16(1, TC, H, K, seed=62), k=_fp16(1, 2 * TC, H, K, seed=63), v=_fp16(1, 2 * TC, H, V, seed=64),
        g=_fp16(1, TC, H, seed=65, fn=lambda x: F.logsigmoid(x + 2)),
        beta=_fp16(1, 2 * TC, H, seed=66, fn=torch.sigmoid), h0=_fp16(1, H, K, V, seed=67).float()))


CASES = {"fused_recurrent_gla/varlen": gla, "fused_recurrent_retention": retention, "fused_recurrent_kda": kda,
         "fused_recurrent_comba": comba, "fused_mul_recurrent_rwkv7": rwkv7, "rotary_embedding": rotary,
         "chunk_gla": chunk_gla_case, "chunk_retention": chunk_retention_case, "chunk_kda": chunk_kda_case,
         "chunk_comba": chunk_comba_case, "chunk_gated_delta_product": chunk_gated_delta_product_case}

if __name__ == "__main__":
    results = {}
    for name, case in CASES.items():
        try:
            results[name] = case()
        except Exception as exc:  # recorded, judged (and reported) by the test
            results[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    with open(sys.argv[1], "w") as f:
        json.dump(results, f, indent=1)
