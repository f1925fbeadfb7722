"""The fast NSP mode on fla's real kernels (`REFINE_FLA_KERNELS=interpret`: fla's Triton kernels through Triton's CPU
interpreter, model in fp16), and a 2-step mid-training through Ray on them in both NSP modes.

Triton picks interpreted kernels when fla is imported, so each check runs in a child process (this pytest process
has fla imported with the CPU stand-ins): `fast_nsp_interpret_probe.py` computes the comparisons of
`test_fast_nsp.py` (fast vs faithful: old log-probs, hidden states, rewards, losses, every parameter gradient) and
`python -m refine.main` runs the training.

Tolerances (fp16; unit roundoff u = 2^-11 = 4.9e-4). Fast and faithful compute the same quantities along different
kernel paths (faithful: whole re-left-padded prefixes through fla's chunk kernels; fast: the document in segments,
then branches decoded by the fused-recurrent ones), each rounding activations to fp16 at every layer boundary, so
they differ by a few roundings of each activation, not by 1e-5 as in fp32. Allowed: 8 u relative to each
quantity's scale (log-probs up to ~7 in magnitude with a 512-token vocabulary, hidden states ~4, NTP loss ~6, PPO
loss and metrics at least 1); rewards (cosine in [-1, 1]) 1e-3 absolute; gradients a relative norm difference of
2e-2 per parameter (sums over many fp16-rounded products, ~40 u). Measured worst (docs/kernels.md): log-probs 3.4e-3,
hidden 5.9e-3, rewards 1e-4, NTP loss 2.7e-3, gradients 2.8e-3 relative.
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
BANNER = "fla kernels active: fla's own Triton kernels through Triton's interpreter"


def _interpret_env() -> dict:
    env = {**os.environ, "REFINE_FLA_KERNELS": "interpret", "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("REFINE_CPU_KERNELS", None)
    return env


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    out = tmp_path_factory.mktemp("fast_interpret") / "fast.json"
    result = subprocess.run([sys.executable, "-W", "ignore", str(REPO_ROOT / "tests/trainer/fast_nsp_interpret_probe.py"),
                             str(out)], capture_output=True, text=True, env=_interpret_env(), cwd=REPO_ROOT,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    assert BANNER in result.stderr
    return json.loads(out.read_text())


@pytest.mark.parametrize("kind", ["delta_net", "gated_deltanet"])
def test_fast_rollout_equals_faithful_on_fla_kernels(measured, kind):
    rollout = measured[kind]["rollout"]
    assert rollout["dtype"] == "torch.float16"  # the model really computed in fp16
    assert rollout["ground_truth_ids_equal"]
    for key in ("old_log_probs", "response_hidden"):
        assert rollout[key]["diff"] <= RTOL * rollout[key]["scale"], (key, rollout[key])
    assert rollout["reward_cosine_similarity"]["scale"] > 0
    for key in ("reward_cosine_similarity", "reward_binary", "reward_hybrid"):
        assert key in rollout, sorted(rollout)
        assert rollout[key]["diff"] <= 1e-3, (key, rollout[key])


@pytest.mark.parametrize("kind", ["delta_net", "gated_deltanet"])
def test_fast_loss_and_every_gradient_equal_faithful_on_fla_kernels(measured, kind):
    update = measured[kind]["update"]
    assert update["clipfrac"] > 0, "the comparison should reach the PPO clip"
    assert update["ntp_loss"]["diff"] <= RTOL * update["ntp_loss"]["scale"], update["ntp_loss"]
    assert update["pg_loss"]["diff"] <= RTOL * max(update["pg_loss"]["scale"], 1.0), update["pg_loss"]
    for key, value in update["metrics"].items():
        assert value["diff"] <= RTOL * max(value["scale"], 1.0), (key, value)
    grads = update["gradients"]
    assert grads["all_nonzero"] and grads["n_parameters"] > 10
    assert grads["worst_relative"] <= 2e-2, grads


@pytest.mark.slow
def test_two_step_midtraining_through_ray_on_fla_kernels(tmp_path):
    """`REFINE_FLA_KERNELS=interpret python -m refine.main ...` in both NSP modes: each exits 0, names fla's Triton
    kernels at start-up, computes in fp16, logs rewards for both steps. The two runs go side by side (each is
    mostly Ray start-up and the interpreter's first pass over every kernel), which keeps the tier within minutes."""
    from tests.trainer.conftest import FAST_OVERRIDES

    runs = {}
    for mode in ("faithful", "fast"):
        out_dir = tmp_path / mode
        runs[mode] = (out_dir, subprocess.Popen(
            [sys.executable, "-m", "refine.main", *FAST_OVERRIDES, "trainer.total_training_steps=2",
             f"refine.nsp_mode={mode}", f"trainer.default_local_dir={out_dir}",
             "++ray_kwargs.ray_init.address=local"],  # each run its own Ray instance, never the other's
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_interpret_env(), cwd=REPO_ROOT))
    for mode, (out_dir, process) in runs.items():
        out, _ = process.communicate(timeout=600)
        assert process.returncode == 0, (mode, out[-4000:])
        assert BANNER in out and "the model computes in float16" in out, mode
        records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == [1, 2], mode
        for record in records:
            assert "reward/cs_reward_mean" in record["data"], (mode, sorted(record["data"]))
            assert record["data"]["actor/optimizer_steps_ttt"] >= 1, mode
