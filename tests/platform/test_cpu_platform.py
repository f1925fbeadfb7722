"""The CPU platform plugin in-process: selection, each verl patch, env vars, and "no change on a GPU host"."""

from __future__ import annotations

import importlib
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

import refine.platform as platform
from refine.platform import PATCHES, VERL_VERSION, PlatformCPU

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU platform activates only without CUDA")


def test_verl_sees_the_cpu_platform():
    from verl.plugin.platform import PlatformRegistry, get_platform
    from verl.utils import device

    assert platform.activate() is True
    assert platform.activate() is True  # idempotent
    assert platform.is_active()
    assert PlatformRegistry.get("cpu") is PlatformCPU
    assert isinstance(get_platform(), PlatformCPU)
    assert device.get_device_name() == "cpu"
    assert device.get_nccl_backend() == "gloo"
    assert device.get_resource_name() == "CPU"
    assert torch.zeros(1).to(device.get_device_id()).device.type == "cpu"  # verl does .to(get_device_id())
    torch_device = device.get_torch_device()
    torch_device.empty_cache()
    torch_device.synchronize()
    free, total = torch_device.mem_get_info()
    assert 0 < free <= total
    assert get_platform().ray_resource_options(1) == {"num_cpus": 1}


def test_every_patch_targets_this_verl_version_and_gets_applied():
    import verl

    assert verl.__version__ == VERL_VERSION
    for patch in PATCHES:
        assert patch.verl_version == VERL_VERSION
        importlib.import_module(patch.module)  # the post-import hook patches on first import
    assert set(platform.applied_patches()) == {patch.target for patch in PATCHES}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_GLOO_CHECK = """
import os, torch, torch.distributed as dist
import refine.platform
refine.platform.activate()
from verl.utils.distributed import initialize_global_process_group_ray
initialize_global_process_group_ray(timeout_second=60)
assert dist.get_backend() == "gloo", dist.get_backend()
tensor = torch.ones(3)
dist.all_reduce(tensor)
assert tensor.tolist() == [1.0, 1.0, 1.0]
dist.destroy_process_group()
print("gloo ok")
"""


def test_process_group_uses_gloo_only():
    """Stock verl asks for "cpu:gloo,cpu:gloo" here and torch refuses it (duplicate device type). Run in a fresh
    process, so no other test's process group (or its absence) can change the outcome."""
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    result = subprocess.run([sys.executable, "-c", _GLOO_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "gloo ok" in result.stdout, result.stderr[-2000:]


def test_forward_only_offload_policy_never_pins_memory():
    from torch.distributed.fsdp import CPUOffloadPolicy
    from verl.workers.engine.fsdp import transformer_impl

    policy = transformer_impl.CPUOffloadPolicy(pin_memory=True)  # what verl passes for forward-only engines
    assert isinstance(policy, CPUOffloadPolicy)
    assert policy.pin_memory is False


def test_resource_check_counts_cpus(monkeypatch):
    import ray
    from verl.single_controller.ray import ResourcePoolManager

    monkeypatch.setattr(ray, "available_resources", lambda: {"CPU": 2.0, "memory": 1e9})
    ResourcePoolManager(resource_pool_spec={"global_pool": [2]}, mapping={})._check_resource_available()
    with pytest.raises(ValueError, match="2 free CPU for 3 verl worker processes"):
        ResourcePoolManager(resource_pool_spec={"global_pool": [3]}, mapping={})._check_resource_available()


def test_env_vars_for_driver_and_workers(monkeypatch):
    monkeypatch.setenv("VERL_USE_EXTERNAL_MODULES", "my.plugin,refine.platform")
    env = platform.platform_env_vars()
    assert env["VERL_USE_EXTERNAL_MODULES"] == "my.plugin,refine.platform,refine.models"
    assert env["VERL_PLATFORM"] == "cpu"
    assert env["VERL_ENGINE_DEVICE"] == "cuda"
    monkeypatch.delenv("VERL_USE_EXTERNAL_MODULES")
    assert platform.platform_env_vars(extra_modules=())["VERL_USE_EXTERNAL_MODULES"] == "refine.platform"

    base = {"working_dir": None, "env_vars": {"TOKENIZERS_PARALLELISM": "false", "VERL_ENGINE_DEVICE": "npu"}}
    runtime_env = platform.ray_runtime_env(base)
    assert runtime_env["working_dir"] is None
    assert runtime_env["env_vars"]["TOKENIZERS_PARALLELISM"] == "false"
    assert runtime_env["env_vars"]["VERL_ENGINE_DEVICE"] == "npu"  # the caller's explicit value wins
    assert runtime_env["env_vars"]["VERL_PLATFORM"] == "cpu"
    assert base["env_vars"] == {"TOKENIZERS_PARALLELISM": "false", "VERL_ENGINE_DEVICE": "npu"}  # not modified

    with pytest.raises(ValueError, match="extra_modules='refine.models'"):
        platform.platform_env_vars(extra_modules="refine.models")


_GPU_HOST_PROBE = textwrap.dedent(
    """
    import torch
    torch.cuda.is_available = lambda: True  # pretend this host has a GPU
    import verl  # loads the `verl.plugins` entry point, i.e. refine.platform
    import sys
    import refine.platform as p
    from verl.plugin.platform import PlatformRegistry, platform_manager
    import verl.utils.distributed as dist_utils
    assert "refine.platform" in sys.modules
    assert not p.is_active() and p.activate() is False
    assert "cpu" not in PlatformRegistry.registered_names(), PlatformRegistry.registered_names()
    assert platform_manager._current_platform is None
    assert p.applied_patches() == []
    assert not hasattr(dist_utils.initialize_global_process_group_ray, "__refine_platform_patch__")
    assert p.platform_env_vars() == {"VERL_USE_EXTERNAL_MODULES": "refine.platform,refine.models"}
    print("untouched")
    """
)


def test_gpu_host_is_left_untouched():
    env = {k: v for k, v in os.environ.items() if k not in ("VERL_PLATFORM", "VERL_ENGINE_DEVICE")}
    env.pop("VERL_USE_EXTERNAL_MODULES", None)
    result = subprocess.run(
        [sys.executable, "-c", _GPU_HOST_PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("untouched")


_WRONG_VERL_PROBE = textwrap.dedent(
    """
    import importlib.metadata
    real_version = importlib.metadata.version
    importlib.metadata.version = lambda name: "0.9.2" if name == "verl" else real_version(name)
    import refine.platform
    """
)


def test_plugin_refuses_to_load_on_other_verl_version():
    env = {k: v for k, v in os.environ.items() if k not in ("VERL_PLATFORM", "VERL_ENGINE_DEVICE")}
    env["VERL_USE_EXTERNAL_PLUGINS"] = "none"  # import the plugin ourselves, so its exception reaches us
    result = subprocess.run(
        [sys.executable, "-c", _WRONG_VERL_PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    expected = (
        "refine.platform patches verl 0.9.1 internals but found verl 0.9.2; "
        "install it with: pip install 'verl[verl-core]==0.9.1'"
    )
    assert result.stderr.strip().splitlines()[-1] == f"refine.stack.StackError: {expected}"
    assert any(line.endswith(expected) and line.startswith("ERROR") for line in result.stderr.splitlines())
