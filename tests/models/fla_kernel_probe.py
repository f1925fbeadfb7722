"""Measurements of the fla-kernel tier, run as `REFINE_FLA_KERNELS=interpret python -m tests.models.fla_kernel_probe
OUT.json` (a process of its own: Triton's interpreter must be chosen before fla is imported, and the rest of the
suite imports fla with the CPU stand-ins; `tests/models/test_fla_kernels.py` runs it and judges the numbers).

For every fla op the project calls, on the same fp16 inputs: fla's Triton kernel (interpreted, fp16), the
project's stand-in (fp32 on the fp16 values) and fla's naive reference (or the formula where fla has none, fp64).
Each case records, per output / final state / gradient, the worst absolute difference of fla's kernel from the
reference and from the stand-in, the reference's largest magnitude (the scale) and the kernel's wall time.
"""

from __future__ import annotations

import json
import sys
import time

import torch
import torch.nn.functional as F

import refine.models  # noqa: F401  (REFINE_FLA_KERNELS=interpret: fla's own kernels, interpreted)
from refine.models import cpu_kernels as ck
from refine.models import fla_models

H16 = torch.float16
F64 = torch.float64
CU_LENGTHS = (37, 70, 5)  # a sequence longer than a 64-token chunk, one not a multiple of it, a short one


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _leaves(tensors: dict, dtype):
    """Fresh leaves of the fp16-rounded values in `dtype` (so every implementation sees the same numbers)."""
    return {n: t.to(H16).to(dtype).detach().requires_grad_(t.is_floating_point()) for n, t in tensors.items()}


def _weights(outputs, seed):
    g = _gen(seed)
    return [torch.randn(o.shape, generator=g, dtype=F64) for o in outputs]


def _run(fn, inputs, grad_names, weights=None, seed=0):
    """outputs (list) and gradients {name: grad} of sum(w_i * out_i) with fixed random weights w."""
    outputs = [o for o in fn(inputs) if o is not None]
    weights = weights or _weights(outputs, seed)
    grads = {}
    if grad_names:
        loss = sum((o.to(F64) * w).sum() for o, w in zip(outputs, weights))
        values = torch.autograd.grad(loss, [inputs[n] for n in grad_names])
        grads = dict(zip(grad_names, values))
    return [o.detach() for o in outputs], grads, weights


def _record(names, kernel, standin, reference, seconds):
    out = {"time_s": round(seconds, 3), "quantities": {}}
    (ko, kg), (so, sg), (ro, rg) = kernel, standin, reference
    pairs = [(n, ko[i], so[i], ro[i]) for i, n in enumerate(names)]
    pairs += [(f"d{n}", kg[n], sg[n], rg[n]) for n in kg]
    for name, k, s, r in pairs:
        k, s, r = (t.to(F64) for t in (k, s, r))
        out["quantities"][name] = {
            "vs_naive": (k - r).abs().max().item(),
            "vs_standin": (k - s).abs().max().item(),
            "standin_vs_naive": (s - r).abs().max().item(),
            "scale": r.abs().max().item(),
        }
    return out


def compare(names, fla_fn, standin_fn, reference_fn, tensors, grad_names, seed=0):
    """Run the three implementations on the same fp16-rounded `tensors` and record the differences."""
    start = time.perf_counter()
    k_out, k_grad, weights = _run(fla_fn, _leaves(tensors, H16), grad_names, seed=seed)
    seconds = time.perf_counter() - start
    s_out, s_grad, _ = _run(standin_fn, _leaves(tensors, torch.float32), grad_names, weights)
    r_out, r_grad, _ = _run(reference_fn, _leaves(tensors, F64), grad_names, weights)
    return _record(names, (k_out, k_grad), (s_out, s_grad), (r_out, r_grad), seconds)


# ---- delta rule ---------------------------------------------------------------------------------------------------

def _l2(x):
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + 1e-6)


def _delta_inputs(B, T, H, K, V, seed, N=None, gated=False):
    g = _gen(seed)
    t = {"q": torch.randn(B, T, H, K, generator=g), "k": torch.randn(B, T, H, K, generator=g),
         "v": torch.randn(B, T, H, V, generator=g), "beta": torch.rand(B, T, H, generator=g),
         "h0": torch.randn(N or B, H, K, V, generator=g) * 0.5}
    if gated:  # raw gate / beta pre-activations and the layer's A_log, dt_bias (GatedDeltaNet's in-kernel forms)
        t["beta"] = torch.randn(B, T, H, generator=g)
        t["g"] = torch.randn(B, T, H, generator=g)
        t["A_log"] = torch.log(torch.empty(H).uniform_(1, 16, generator=g))
        t["dt_bias"] = torch.randn(H, generator=g) * 0.5
        t["h0"] = t["h0"].transpose(-1, -2).contiguous()  # GatedDeltaNet keeps the state value-first [N,H,V,K]
    return t


def _segments(cu):
    return [slice(int(cu[i]), int(cu[i + 1])) for i in range(len(cu) - 1)]


def _naive_delta(t, cu=None):
    """fla's `delta_rule_recurrence` (head-first) on l2-normalised q/k, per sequence when packed."""
    from fla.ops.delta_rule.naive import delta_rule_recurrence

    def one(sl, rows):
        q, k, v, beta = (t[n][:, sl].transpose(1, 2) for n in ("q", "k", "v", "beta"))
        o, s = delta_rule_recurrence(_l2(q), _l2(k), v, beta, initial_state=t["h0"][rows], output_final_state=True)
        return o.transpose(1, 2), s

    if cu is None:
        return one(slice(None), slice(None))
    parts = [one(sl, slice(i, i + 1)) for i, sl in enumerate(_segments(cu))]
    return torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 0)


def _naive_gated(t, cu=None, state_v_first=True):
    """fla's `naive_recurrent_gated_delta_rule` on GatedDeltaNet's in-kernel forms: l2-normalised q/k,
    beta = sigmoid(b), g = -exp(A_log) * softplus(a + dt_bias); the value-first state transposed for it."""
    from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule

    gate = -t["A_log"].exp() * F.softplus(t["g"] + t["dt_bias"])
    beta = t["beta"].sigmoid()
    h0 = t["h0"].transpose(-1, -2) if state_v_first else t["h0"]

    def one(sl, rows):
        o, s = naive_recurrent_gated_delta_rule(_l2(t["q"][:, sl]), _l2(t["k"][:, sl]), t["v"][:, sl], beta[:, sl],
                                                gate[:, sl], initial_state=h0[rows], output_final_state=True)
        return o, (s.transpose(-1, -2) if state_v_first else s)

    if cu is None:
        return one(slice(None), slice(None))
    parts = [one(sl, slice(i, i + 1)) for i, sl in enumerate(_segments(cu))]
    return torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 0)


def delta_cases(out):
    from fla.ops.delta_rule import chunk_delta_rule, fused_recurrent_delta_rule

    cu = torch.tensor([0, *torch.tensor(CU_LENGTHS).cumsum(0).tolist()])
    names = ("o", "final_state")
    grads = ["q", "k", "v", "beta", "h0"]
    ops = {"chunk_delta_rule": (chunk_delta_rule, ck.chunk_delta_rule),
           "fused_recurrent_delta_rule": (fused_recurrent_delta_rule, ck.fused_recurrent_delta_rule)}
    for op, (fla_op, standin_op) in ops.items():
        def call(fn, cu_=None):
            return lambda t: fn(t["q"], t["k"], t["v"], t["beta"], initial_state=t["h0"], output_final_state=True,
                                use_qk_l2norm_in_kernel=True, cu_seqlens=cu_)
        T = 100 if op.startswith("chunk") else 40
        fixed = _delta_inputs(2, T, 2, 32, 16, seed=1)
        out[f"{op}"] = compare(names, call(fla_op), call(standin_op), _naive_delta, fixed, grads)
        packed = _delta_inputs(1, int(cu[-1]), 2, 32, 16, seed=2, N=len(CU_LENGTHS))
        out[f"{op}/varlen"] = compare(names, call(fla_op, cu), call(standin_op, cu), lambda t: _naive_delta(t, cu),
                                      packed, grads)
    # the deliberately wrong state: the key-first state laid out value-first ([K,V] data read as [V,K] memory),
    # same shape, so only the values can tell
    wrong = _delta_inputs(2, 100, 2, 32, 16, seed=1)
    wrong_h0 = wrong["h0"].transpose(-1, -2).reshape(wrong["h0"].shape)

    def fla_wrong(t):
        return chunk_delta_rule(t["q"], t["k"], t["v"], t["beta"], initial_state=wrong_h0.to(H16).float(),
                                output_final_state=True, use_qk_l2norm_in_kernel=True)
    standin = lambda t: ck.chunk_delta_rule(t["q"], t["k"], t["v"], t["beta"], initial_state=t["h0"],  # noqa: E731
                                            output_final_state=True, use_qk_l2norm_in_kernel=True)
    out["wrong_state/chunk_delta_rule"] = compare(names, fla_wrong, standin, _naive_delta, wrong, [])


def gated_cases(out):
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule

    cu = torch.tensor([0, *torch.tensor(CU_LENGTHS).cumsum(0).tolist()])
    names = ("o", "final_state")

    def call(fn, cu_=None):  # exactly the arguments GatedDeltaNet passes (fla/layers/gated_deltanet.py)
        return lambda t: fn(q=t["q"], k=t["k"], v=t["v"], g=t["g"], beta=t["beta"], initial_state=t["h0"],
                            output_final_state=True, use_qk_l2norm_in_kernel=True, use_beta_sigmoid_in_kernel=True,
                            state_v_first=True, cu_seqlens=cu_, use_gate_in_kernel=True, A_log=t["A_log"],
                            dt_bias=t["dt_bias"])
    chunk_grads = ["q", "k", "v", "g", "beta", "h0", "A_log", "dt_bias"]
    # fla's fused_recurrent_gated_delta_rule has no backward (it raises); GatedDeltaNet uses it only without grad
    for op, fla_op, standin_op, grads, T in (
            ("chunk_gated_delta_rule", chunk_gated_delta_rule, ck.chunk_gated_delta_rule, chunk_grads, 100),
            ("fused_recurrent_gated_delta_rule", fused_recurrent_gated_delta_rule,
             ck.fused_recurrent_gated_delta_rule, [], 40)):
        fixed = _delta_inputs(2, T, 2, 32, 16, seed=3, gated=True)
        out[op] = compare(names, call(fla_op), call(standin_op), _naive_gated, fixed, grads)
        packed = _delta_inputs(1, int(cu[-1]), 2, 32, 16, seed=4, N=len(CU_LENGTHS), gated=True)
        out[f"{op}/varlen"] = compare(names, call(fla_op, cu), call(standin_op, cu), lambda t: _naive_gated(t, cu),
                                      packed, grads)


# ---- short convolution --------------------------------------------------------------------------------------------

def _conv_reference(x, weight, bias, cache, residual=None):
    """silu(depthwise causal conv over [cache, x] + bias) (+ residual) and the last W inputs, in fp64."""
    N, T, D = x.shape
    W = weight.shape[1]
    history = cache if cache is not None else x.new_zeros(N, D, W)
    full = torch.cat([history, x.transpose(1, 2)], -1)
    y = F.conv1d(full, weight.unsqueeze(1), bias, groups=D)[..., 1:].transpose(1, 2)
    y = F.silu(y)
    if residual is not None:
        y = y + residual
    return y, full[..., -W:]


def _read_as_next_call(y, cache):
    """(y, cache slot 0 without gradient, slots 1..W-1). The next call reads only slots 1..W-1 (its window is those
    and the new input), and fla's backward propagates the final cache's gradient only into the inputs of those
    slots (causal_conv1d_bwd_kernel, `start_tok = T - (W - 1)`); slot 0's value is still compared."""
    return y, cache[..., :1].detach(), cache[..., 1:]


def conv_cases(out):
    from fla.modules import ShortConvolution
    from fla.modules.causal_conv1d.ops import causal_conv1d

    D, W = 48, 4
    g = _gen(5)
    weight, bias = torch.randn(D, W, generator=g) * 0.5, torch.randn(D, generator=g) * 0.1

    def module(dtype):
        conv = ShortConvolution(hidden_size=D, kernel_size=W, bias=True, activation="silu").to(dtype)
        with torch.no_grad():
            conv.weight.copy_(weight.to(H16).to(dtype)[:, None]), conv.bias.copy_(bias.to(H16).to(dtype))
        return conv

    def conv_call(fla: bool, dtype, with_cache):
        conv = module(dtype)
        method = ShortConvolution.forward if fla else ck.short_conv_forward  # the stand-in as a method

        def fn(t):
            return _read_as_next_call(*method(conv, t["x"], residual=t.get("residual"),
                                              cache=t.get("cache") if with_cache else None, output_final_state=True))
        return fn

    def reference(with_cache):
        return lambda t: _read_as_next_call(*_conv_reference(t["x"], weight.to(H16).to(F64), bias.to(H16).to(F64),
                                                             t.get("cache") if with_cache else None, t.get("residual")))

    for with_cache in (False, True):
        t = {"x": torch.randn(2, 70, D, generator=g), "residual": torch.randn(2, 70, D, generator=g)}
        grads = ["x", "residual"]
        if with_cache:
            t["cache"] = torch.randn(2, D, W, generator=g)
            grads.append("cache")
        name = "ShortConvolution" + ("/cache" if with_cache else "")
        out[name] = compare(("y", "final_cache[0]", "final_cache[1:]"), conv_call(True, H16, with_cache), conv_call(False, torch.float32,
                            with_cache), reference(with_cache), t, grads)
    # the one-token decoding step (no grad: fla's in-place cache update); the returned cache is the updated one
    step = {"x": torch.randn(3, 1, D, generator=g), "cache": torch.randn(3, D, W, generator=g)}

    def step_call(fla, dtype):
        conv = module(dtype)

        def fn(t):
            cache = t["cache"].detach().clone()
            with torch.no_grad():
                y, new = (ShortConvolution.forward if fla else ck.short_conv_forward)(
                    conv, t["x"].detach(), cache=cache, output_final_state=True)
            assert new is cache, "one token without grad must update the cache in place"
            return y, new
        return fn
    out["ShortConvolution/decode_step"] = compare(
        ("y", "final_cache"), step_call(True, H16), step_call(False, torch.float32),
        lambda t: _conv_reference(t["x"], weight.to(H16).to(F64), bias.to(H16).to(F64), t["cache"]), step, [])
    # GatedDeltaNet's fused q/k/v path calls causal_conv1d directly (no cache)
    t = {"x": torch.randn(2, 70, D, generator=g), "w": weight, "b": bias}
    out["causal_conv1d"] = compare(
        ("y",), lambda t: causal_conv1d(x=t["x"], weight=t["w"], bias=t["b"], activation="silu")[:1],
        lambda t: ck.causal_conv1d(x=t["x"], weight=t["w"], bias=t["b"], activation="silu")[:1],
        lambda t: _conv_reference(t["x"], t["w"], t["b"], None)[:1], t, ["x", "w", "b"])


# ---- norms and fused ops ------------------------------------------------------------------------------------------

def norm_cases(out):
    from fla.modules import FusedRMSNormGated, L2Norm, RMSNorm
    from fla.modules.mlp import swiglu, swiglu_linear
    from fla.modules.norm.layernorm import rms_norm_ref

    D = 64
    g = _gen(6)
    w = torch.randn(D, generator=g)
    t = {"x": torch.randn(2, 50, D, generator=g), "r": torch.randn(2, 50, D, generator=g)}

    def rms(fla):
        norm = RMSNorm(D, eps=1e-5)
        with torch.no_grad():
            norm.weight.copy_(w.to(H16).float())
        forward = RMSNorm.forward if fla else ck.rms_norm_forward
        return lambda t: forward(norm.to(t["x"].dtype) if fla else norm, t["x"], t["r"], prenorm=True)
    out["RMSNorm/residual_prenorm"] = compare(
        ("y", "residual_out"), rms(True), rms(False),
        lambda t: rms_norm_ref(t["x"], w.to(H16).to(F64), None, t["r"], eps=1e-5, prenorm=True), t, ["x", "r"])

    t2 = {"x": torch.randn(2, 50, D, generator=g), "z": torch.randn(2, 50, D, generator=g)}

    def gated(fla):
        norm = FusedRMSNormGated(D, eps=1e-5)
        with torch.no_grad():
            norm.weight.copy_(w.to(H16).float())
        forward = FusedRMSNormGated.forward if fla else ck.rms_norm_gated_forward
        return lambda t: (forward(norm.to(t["x"].dtype) if fla else norm, t["x"], t["z"]),)
    out["FusedRMSNormGated"] = compare(
        ("y",), gated(True), gated(False),
        lambda t: (rms_norm_ref(t["x"], w.to(H16).to(F64), None, eps=1e-5) * F.silu(t["z"]),), t2, ["x", "z"])

    t3 = {"x": torch.randn(2, 50, 4, 32, generator=g)}
    out["L2Norm"] = compare(("y",), lambda t: (L2Norm.forward(L2Norm(), t["x"]),),
                            lambda t: (ck.l2norm_forward(L2Norm(), t["x"]),), lambda t: (_l2(t["x"]),), t3, ["x"])

    t4 = {"x": torch.randn(2, 50, D, generator=g), "y": torch.randn(2, 50, D, generator=g),
          "w": torch.randn(32, D, generator=g) * 0.1, "b": torch.randn(32, generator=g) * 0.1}
    out["swiglu"] = compare(("y",), lambda t: (swiglu(t["x"], t["y"]),), lambda t: (ck.swiglu(t["x"], t["y"]),),
                            lambda t: (F.silu(t["x"]) * t["y"],), t4, ["x", "y"])
    out["swiglu_linear"] = compare(
        ("y",), lambda t: (swiglu_linear(t["x"], t["y"], t["w"], t["b"]),),
        lambda t: (ck.swiglu_linear(t["x"], t["y"], t["w"], t["b"]),),
        lambda t: (F.linear(F.silu(t["x"]) * t["y"], t["w"], t["b"]),), t4, ["x", "y", "w", "b"])


def main(path: str) -> None:
    assert fla_models.kernel_mode() == "interpret", f"kernel mode is {fla_models.kernel_mode()}, not interpret"
    torch.set_num_threads(1)
    out: dict = {}
    for cases in (delta_cases, gated_cases, conv_cases, norm_cases):
        cases(out)
    with open(path, "w") as handle:
        json.dump(out, handle, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
