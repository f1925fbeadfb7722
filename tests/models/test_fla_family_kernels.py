"""The fla-kernel tier for the newer families: fla's own Triton kernels (interpreted on CPU) equal the stand-ins.

In one child process (`tests/models/fla_family_kernel_probe.py`: Triton's interpreter must be chosen before fla is
imported; ~1 min). The recurrent (decoding) forms, called as the layers call them, on the same fp32 inputs: both
sides compute in fp32, so they agree to fp32 precision, 1e-5 relative to the quantity's largest magnitude. The
chunk forms on the same fp16 values (fla refuses fp32): fla computes in fp16, so 8 fp16 roundings of the scale,
as `test_fla_kernels.py`. A case missing from the child's output, or one that raised, fails.
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
RTOL = 1e-5
RTOL_FP16 = 8 * 2.0**-11  # fla's chunk kernels compute in fp16: 8 roundings of the scale (as test_fla_kernels)
CHUNK_OUTPUTS = ("o", "final_state", "dq", "dk", "dv", "dh0")
CASES = {
    "fused_recurrent_gla/varlen": ("o", "final_state"),
    "fused_recurrent_retention": ("o", "final_state"),
    "fused_recurrent_kda": ("o", "final_state"),
    "fused_recurrent_comba": ("o", "final_state"),
    "fused_mul_recurrent_rwkv7": ("o", "final_state", "token_shift", "token_shift_cache"),
    "rotary_embedding": ("y",),
    "chunk_gla": (*CHUNK_OUTPUTS, "dg"),
    "chunk_retention": CHUNK_OUTPUTS,
    "chunk_kda": (*CHUNK_OUTPUTS, "dg", "dbeta"),
    "chunk_comba": (*CHUNK_OUTPUTS, "dp", "dg", "dbeta"),
    "chunk_gated_delta_product": (*CHUNK_OUTPUTS, "dg", "dbeta"),
}


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    out = tmp_path_factory.mktemp("fla_family_kernels") / "probe.json"
    env = {**os.environ, "REFINE_FLA_KERNELS": "interpret", "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("REFINE_CPU_KERNELS", None)
    result = subprocess.run([sys.executable, "-W", "ignore", str(REPO_ROOT / "tests/models/fla_family_kernel_probe.py"),
                             str(out)], capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("case", sorted(CASES))
def test_fla_kernel_equals_the_stand_in(measured, case):
    assert case in measured, f"the probe did not report {case}"
    assert "error" not in measured[case], measured[case].get("error")
    rtol = RTOL_FP16 if case.startswith("chunk_") else RTOL
    for name in CASES[case]:
        m = measured[case][name]
        assert m["diff"] <= rtol * max(1.0, m["scale"]), f"{case} {name}: {m['diff']:.3g} (scale {m['scale']:.3g})"
