"""The fla-kernel tier: fla's own Triton kernels, run on CPU by Triton's interpreter (`REFINE_FLA_KERNELS=interpret`),
against the project's pure-PyTorch stand-ins and fla's naive references, for every fla op the project calls.

Triton picks interpreted or compiled kernels when fla is imported, and this pytest process has fla imported with
the stand-ins, so the measurements run in one child process (`tests/models/fla_kernel_probe.py`, ~30 s); each test
below judges its part. A case missing from the child's output fails (the expected cases are listed here).

Tolerance (fla's kernel vs the fp64 reference, and vs the fp32 stand-in): all three get the same fp16-rounded
inputs, so the differences come from fla's fp16 arithmetic: outputs, WY blocks and chunk states stored in fp16
(unit roundoff u = 2^-11 = 4.9e-4) with fp32 accumulation, a handful of roundings of values bounded by the
quantity's largest magnitude. Allowed: 8 u x that magnitude (3.9e-3 relative); measured worst 1.4e-3
(docs/kernels.md). The stand-in itself must match the reference to fp32 precision (1e-5 relative).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.fla_kernels

REPO_ROOT = Path(__file__).resolve().parents[2]
U16 = 2.0 ** -11
RTOL = 8 * U16
STANDIN_RTOL = 1e-5

CASES = {  # case -> the outputs, final states and gradients it must report
    "chunk_delta_rule": ("o", "final_state", "dq", "dk", "dv", "dbeta", "dh0"),
    "chunk_delta_rule/varlen": ("o", "final_state", "dq", "dk", "dv", "dbeta", "dh0"),
    "fused_recurrent_delta_rule": ("o", "final_state", "dq", "dk", "dv", "dbeta", "dh0"),
    "fused_recurrent_delta_rule/varlen": ("o", "final_state", "dq", "dk", "dv", "dbeta", "dh0"),
    "chunk_gated_delta_rule": ("o", "final_state", "dq", "dk", "dv", "dg", "dbeta", "dh0", "dA_log", "ddt_bias"),
    "chunk_gated_delta_rule/varlen": ("o", "final_state", "dq", "dk", "dv", "dg", "dbeta", "dh0", "dA_log",
                                      "ddt_bias"),
    "fused_recurrent_gated_delta_rule": ("o", "final_state"),  # fla has no backward for it (raises)
    "fused_recurrent_gated_delta_rule/varlen": ("o", "final_state"),
    "ShortConvolution": ("y", "final_cache[0]", "final_cache[1:]", "dx", "dresidual"),
    "ShortConvolution/cache": ("y", "final_cache[0]", "final_cache[1:]", "dx", "dresidual", "dcache"),
    "ShortConvolution/decode_step": ("y", "final_cache"),
    "causal_conv1d": ("y", "dx", "dw", "db"),
    "RMSNorm/residual_prenorm": ("y", "residual_out", "dx", "dr"),
    "FusedRMSNormGated": ("y", "dx", "dz"),
    "L2Norm": ("y", "dx"),
    "swiglu": ("y", "dx", "dy"),
    "swiglu_linear": ("y", "dx", "dy", "dw", "db"),
}


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    out = tmp_path_factory.mktemp("fla_kernels") / "probe.json"
    env = {**os.environ, "REFINE_FLA_KERNELS": "interpret", "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("REFINE_CPU_KERNELS", None)
    result = subprocess.run([sys.executable, "-W", "ignore", str(REPO_ROOT / "tests/models/fla_kernel_probe.py"),
                             str(out)], capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "fla kernels active: fla's own Triton kernels" in result.stderr  # the interpret banner, not the stand-ins'
    return json.loads(out.read_text())


def within_tolerance(quantity: dict) -> bool:
    """fla's kernel within 8 fp16 roundings of the quantity's scale, from the reference and from the stand-in."""
    allowed = RTOL * quantity["scale"]
    return quantity["vs_naive"] <= allowed and quantity["vs_standin"] <= allowed


@pytest.mark.parametrize("case", sorted(CASES))
def test_fla_kernel_matches_standin_and_naive_reference(measured, case):
    assert case in measured, f"the probe did not measure {case}"
    quantities = measured[case]["quantities"]
    assert set(quantities) == set(CASES[case])
    for name, q in quantities.items():
        assert q["scale"] > 0 or name.startswith("final_cache"), f"{case} {name}: all-zero reference tests nothing"
        assert q["standin_vs_naive"] <= STANDIN_RTOL * max(q["scale"], 1.0), f"{case} {name}: stand-in {q}"
        assert within_tolerance(q), (f"{case} {name}: fla kernel off by {q['vs_naive']:.3g} (reference) / "
                                     f"{q['vs_standin']:.3g} (stand-in), allowed {RTOL * q['scale']:.3g}")


def test_a_transposed_initial_state_fails_the_check(measured):
    """The key-first state [K=32, V=16] laid out value-first (same shape, wrong values) must not pass: the check
    that passes the right state detects the wrong one in the output and in the final state."""
    wrong = measured["wrong_state/chunk_delta_rule"]["quantities"]
    right = measured["chunk_delta_rule"]["quantities"]
    for name in ("o", "final_state"):
        assert within_tolerance(right[name])
        assert not within_tolerance(wrong[name]), f"{name}: a transposed state went unnoticed ({wrong[name]})"
        assert wrong[name]["vs_naive"] > 20 * RTOL * wrong[name]["scale"]  # not a near miss


def test_a_wrong_switch_value_fails_before_ray_in_one_line():
    env = {**os.environ, "REFINE_FLA_KERNELS": "foo", "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, "-m", "refine.main", "trainer.total_training_steps=2"],
                            capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == ["refine: configuration error: REFINE_FLA_KERNELS='foo' is not a kernel choice; use "
                     "REFINE_FLA_KERNELS=interpret (fla's Triton kernels through Triton's CPU interpreter) or leave "
                     "it unset"]


def test_ray_workers_get_the_switch_and_triton_interpret(monkeypatch):
    from refine.platform import platform_env_vars

    monkeypatch.setenv("REFINE_FLA_KERNELS", "interpret")
    env = platform_env_vars()
    assert env["REFINE_FLA_KERNELS"] == "interpret" and env["TRITON_INTERPRET"] == "1"
    monkeypatch.delenv("REFINE_FLA_KERNELS")
    assert "TRITON_INTERPRET" not in platform_env_vars()


def test_interpret_mode_refuses_a_triton_imported_without_it():
    """This process imported triton in compiled mode: switching to the interpreter now would leave triton's own
    helpers compiled (every kernel fails), so it is refused with the reason."""
    import triton  # noqa: F401  (compiled mode, as the rest of the suite imports it)

    from refine import kernel_switch

    assert os.environ.get("TRITON_INTERPRET") != "1"
    with pytest.raises(RuntimeError, match="triton was imported before refine.models"):
        kernel_switch.set_interpret_env()
