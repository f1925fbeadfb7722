"""The GPU presets (configs/preset/gpu_*.yaml): each is its official phase preset, every official value kept
(refine/preflight/official_presets.py, the table the phase presets and demo scripts are checked against), plus the
GPU set-up pinned; they validate."""

from __future__ import annotations

import pytest

from refine.preflight.official_presets import NOT_IN_PRESETS, PHASES, expected
from tests.trainer.conftest import shrunk_phase_overrides

# what a GPU preset adds to its phase preset: precision, checkpointing, sharding, no offload, CUDA
GPU_SETUP = {
    "actor_rollout_ref.model.enable_gradient_checkpointing": True,
    "actor_rollout_ref.actor.strategy": "fsdp2",
    "actor_rollout_ref.actor.fsdp_config.model_dtype": "fp32",
    "actor_rollout_ref.actor.fsdp_config.dtype": "bfloat16",
    "actor_rollout_ref.actor.fsdp_config.mixed_precision.param_dtype": "bf16",
    "actor_rollout_ref.actor.fsdp_config.mixed_precision.reduce_dtype": "fp32",
    "actor_rollout_ref.actor.fsdp_config.mixed_precision.buffer_dtype": "fp32",
    "actor_rollout_ref.actor.fsdp_config.reshard_after_forward": True,
    "actor_rollout_ref.actor.fsdp_config.fsdp_size": -1,
    "actor_rollout_ref.actor.fsdp_config.param_offload": False,
    "actor_rollout_ref.actor.fsdp_config.optimizer_offload": False,
    "trainer.device": "cuda",
    "trainer.nnodes": 1,
}


def _flat(config) -> dict:
    from omegaconf import OmegaConf

    def walk(node, prefix):
        for key, value in node.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict) and value:
                yield from walk(value, f"{path}.")
            else:
                yield path, value

    return dict(walk(OmegaConf.to_container(config, resolve=False), ""))


def _composed(compose_config, preset: str):
    from refine.preflight.aliases import apply_official_aliases

    config = compose_config([f"+preset={preset}"], fast=False)
    apply_official_aliases(config)
    return config


@pytest.mark.parametrize("phase", PHASES)
def test_gpu_preset_keeps_every_official_value_and_adds_only_the_gpu_setup(compose_config, phase):
    from omegaconf import OmegaConf

    gpu = _composed(compose_config, f"gpu_{phase}")
    want = {key: value for key, value in expected(phase).items() if key not in NOT_IN_PRESETS}
    assert {key: OmegaConf.select(gpu, key) for key in want} == want
    assert gpu.refine.nsp_mode == "faithful"

    flat, base = _flat(gpu), _flat(_composed(compose_config, phase))
    changed = {key for key, value in flat.items() if base.get(key, "<absent>") != value}
    assert changed <= set(GPU_SETUP) and {key: flat[key] for key in GPU_SETUP} == GPU_SETUP


def test_verl_reads_the_gpu_fsdp_settings(compose_config):
    """verl's own config dataclass accepts the pinned FSDP block (mixed precision as verl's engine reads it)."""
    from verl.utils.config import omega_conf_to_dataclass

    config = compose_config(["+preset=gpu_midtrain"], fast=False)
    fsdp = omega_conf_to_dataclass(config.actor_rollout_ref.actor.fsdp_config)
    assert type(fsdp).__name__ == "FSDPEngineConfig"
    assert dict(fsdp.mixed_precision) == {"param_dtype": "bf16", "reduce_dtype": "fp32", "buffer_dtype": "fp32"}
    assert fsdp.model_dtype == "fp32" and fsdp.reshard_after_forward and fsdp.fsdp_size == -1


@pytest.mark.parametrize("phase", PHASES)
def test_gpu_preset_validates(compose_config, ruler_files, phase):
    """Validation as before Ray, on the shipped tiny model and data (sizes shrunk to them, as the phase presets'
    own test does); the device check is `refine.main.prepare`'s and needs a GPU."""
    from refine.preflight.prepare import prepare_config

    config = compose_config(shrunk_phase_overrides(f"gpu_{phase}", phase, ruler_files), fast=False)
    rc = prepare_config(config)
    assert rc.micro_batch_size_per_gpu == 2 and config.trainer.device == "cuda"


def test_gpu_preset_on_a_cpu_host_is_one_clear_error(compose_config):
    import torch

    from refine.preflight.prepare import prepare
    from refine.stack import StackError

    if torch.cuda.is_available():
        pytest.skip("this host has a GPU")
    with pytest.raises(StackError, match=r"trainer.device=cuda was requested but .*set trainer.device=cpu"):
        prepare(compose_config(["+preset=gpu_midtrain"], fast=False))
