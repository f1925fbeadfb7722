"""`refine.models.fla_models`: registration, the CPU-kernel switch, its version guard and error lines, the banner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import refine.models  # noqa: F401
from refine.models import cpu_kernels, fla_models

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_importing_refine_models_registers_fla_models_with_attention_head_names():
    from transformers import AutoConfig, AutoModelForCausalLM

    from refine.models.tiny import tiny_config

    fla_models.name_attention_heads()  # idempotent
    assert AutoConfig.for_model("delta_net").model_type == "delta_net"
    config = tiny_config("gated_deltanet", num_heads=4)
    assert (config.num_attention_heads, config.num_key_value_heads) == (4, 4)  # verl reads these names
    model = AutoModelForCausalLM.from_config(config)
    assert type(model).__name__ == "GatedDeltaNetForCausalLM"


def test_every_listed_fla_name_points_at_its_cpu_kernel():
    import fla.layers.delta_net
    import fla.layers.gated_deltanet
    from fla.modules import FusedRMSNormGated, RMSNorm, ShortConvolution

    assert fla_models.cpu_kernels_installed()
    assert fla.layers.delta_net.chunk_delta_rule is cpu_kernels.chunk_delta_rule
    assert fla.layers.gated_deltanet.fused_recurrent_gated_delta_rule is cpu_kernels.fused_recurrent_gated_delta_rule
    assert ShortConvolution.forward is cpu_kernels.short_conv_forward
    assert RMSNorm.forward is cpu_kernels.rms_norm_forward
    assert FusedRMSNormGated.forward is cpu_kernels.rms_norm_gated_forward


def test_uninstall_restores_fla_ops_and_install_is_idempotent():
    import fla.layers.delta_net
    from fla.ops.delta_rule.chunk import chunk_delta_rule as fla_chunk_delta_rule

    try:
        fla_models.uninstall_cpu_kernels()
        assert fla.layers.delta_net.chunk_delta_rule is fla_chunk_delta_rule
        assert not fla_models.cpu_kernels_installed()
    finally:
        fla_models.install_cpu_kernels()
        fla_models.install_cpu_kernels()
    assert fla_models.cpu_kernels_installed()
    fla_models.uninstall_cpu_kernels()  # the originals recorded by the first install survive the second one
    try:
        assert fla.layers.delta_net.chunk_delta_rule is fla_chunk_delta_rule
    finally:
        fla_models.install_cpu_kernels()


def test_other_fla_version_is_refused_with_one_line(monkeypatch):
    monkeypatch.setattr(fla_models, "installed_fla_version", lambda: "0.5.1")
    with pytest.raises(RuntimeError, match=r"flash-linear-attention==0\.6\.0, found 0\.5\.1") as info:
        fla_models.install_cpu_kernels()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("value", "wanted"), [("1", True), ("0", False), ("", True)])
def test_env_switch(monkeypatch, value, wanted):
    monkeypatch.setenv(fla_models.ENV_SWITCH, value)
    assert fla_models.cpu_kernels_wanted() is wanted  # "" falls back to "no CUDA", true on this machine


def test_env_switch_rejects_other_values(monkeypatch):
    monkeypatch.setenv(fla_models.ENV_SWITCH, "yes")
    with pytest.raises(ValueError, match="REFINE_CPU_KERNELS"):
        fla_models.cpu_kernels_wanted()


def _run_python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    env.pop(fla_models.ENV_SWITCH, None)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO_ROOT,
                          timeout=300)


def test_missing_triton_gives_one_clear_line():
    result = _run_python("import sys; sys.modules['triton'] = None; import refine.models")
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: refine.models:") and "pip install triton" in last
    assert "site-packages/fla" not in result.stderr  # failed before fla, no deep trace


def test_banner_prints_once_at_first_use_not_at_import():
    code = (
        "import sys, torch\n"
        "import refine.models\n"
        "print('IMPORTED', file=sys.stderr, flush=True)\n"
        "from transformers import AutoModelForCausalLM\n"
        "from refine.models.tiny import tiny_deltanet_config\n"
        "model = AutoModelForCausalLM.from_config(tiny_deltanet_config())\n"
        "ids = torch.randint(3, 512, (1, 8))\n"
        "model(input_ids=ids); model(input_ids=ids)\n"
    )
    result = _run_python(code)
    assert result.returncode == 0, result.stderr[-2000:]
    before, _, after = result.stderr.partition("IMPORTED")
    assert cpu_kernels.BANNER not in before
    assert after.count(cpu_kernels.BANNER) == 1
