"""CPU kernels vs fla's own Triton kernels, on a GPU (skipped without CUDA: CI has none).

The pure-PyTorch kernels are device-agnostic, so on a GPU both run on the same CUDA tensors. fla's chunk kernel is
bf16/fp16 only, so the comparison is in bf16 against the fp32 result of our kernel, with bf16 tolerances.
"""

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (fla's Triton kernels)")


def _inputs(B=2, T=200, H=4, D=64, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v = (torch.randn(B, T, H, D, device="cuda", generator=gen) for _ in range(3))
    beta = torch.rand(B, T, H, device="cuda", generator=gen)
    h0 = torch.randn(B, H, D, D, device="cuda", generator=gen) * 0.1
    return q, k, v, beta, h0


@pytest.mark.parametrize("op", ["chunk", "fused_recurrent"])
def test_delta_rule_matches_fla_triton(op):
    import fla.ops.delta_rule as fla_ops

    from refine.models.cpu_kernels import delta_rule as ours

    q, k, v, beta, h0 = _inputs()
    triton_fn = getattr(fla_ops, f"{op}_delta_rule")
    our_fn = getattr(ours, f"{op}_delta_rule")
    dtype = torch.bfloat16 if op == "chunk" else torch.float32
    args = [t.to(dtype).requires_grad_() for t in (q, k, v, beta)]
    h0_t = h0.clone().requires_grad_()
    o_ref, ht_ref = triton_fn(*args, initial_state=h0_t, output_final_state=True, use_qk_l2norm_in_kernel=True)
    (o_ref.float().sum() + ht_ref.float().pow(2).sum()).backward()
    ref_grads = [t.grad.float() for t in (*args, h0_t)]

    mine = [t.detach().float().requires_grad_() for t in (q, k, v, beta)]
    h0_m = h0.clone().requires_grad_()
    o, ht = our_fn(*mine, initial_state=h0_m, output_final_state=True, use_qk_l2norm_in_kernel=True)
    (o.sum() + ht.pow(2).sum()).backward()
    tol = dict(atol=5e-2, rtol=5e-2) if dtype == torch.bfloat16 else dict(atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(o.to(dtype).float(), o_ref.float(), **tol)
    torch.testing.assert_close(ht, ht_ref.float(), **tol)
    for got, want in zip([t.grad for t in (*mine, h0_m)], ref_grads):
        torch.testing.assert_close(got, want, **tol)
