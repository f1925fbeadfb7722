"""verl `PlatformBase` for machines without an accelerator: device "cpu", gloo collectives, Ray "CPU" resources.

verl 0.9.1 ships platforms for CUDA, NPU and ROCm only; on a CPU-only host its auto-detection falls back to
"nvidia" and the first `get_device_id()` fails. This class is registered as `"cpu"` with verl's own
`PlatformRegistry` (see `refine.platform.activation`), so everything in verl that goes through `get_platform()`
(device name, device module, seeding, Ray resources, process-group backend) works on CPU.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from types import ModuleType
from typing import Any, Optional

import torch
from verl.plugin.platform import PlatformBase

PLATFORM_NAME = "cpu"


def _total_and_free_memory() -> tuple[int, int]:
    """(free, total) bytes of host memory, read from the kernel (no psutil needed)."""
    try:
        pages = os.sysconf("SC_PHYS_PAGES")
        available = os.sysconf("SC_AVPHYS_PAGES")
        page_size = os.sysconf("SC_PAGE_SIZE")
        return available * page_size, pages * page_size
    except (ValueError, OSError):
        return 0, 0


def _nothing(*args: Any, **kwargs: Any) -> None:
    """A device call that has nothing to do on CPU (caches, device selection, profiling, synchronisation)."""
    return None


def _no_device_bytes(device: Any = None) -> int:
    """Device memory figures: there is no device memory on CPU."""
    return 0


def _seed(seed: int) -> None:
    torch.manual_seed(seed)  # the CPU generator is torch's default generator


class CPUDeviceModule(ModuleType):
    """Stand-in for `torch.cuda` on CPU: `torch.cpu` plus no-op memory/cache calls verl makes unconditionally.

    verl calls `get_torch_device().empty_cache()`, `.mem_get_info()`, `.memory_allocated()`, `.get_rng_state()` …
    (about 80 call sites). `torch.cpu` lacks most of these; on CPU they are meaningless, so they are no-ops or
    report host memory. Anything else is looked up on `torch.cpu`.
    """

    def __init__(self) -> None:
        super().__init__("refine_cpu_device")

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.cpu, name)

    empty_cache = ipc_collect = reset_peak_memory_stats = set_per_process_memory_fraction = staticmethod(_nothing)
    set_device = staticmethod(_nothing)
    memory_allocated = memory_reserved = max_memory_allocated = max_memory_reserved = staticmethod(_no_device_bytes)
    manual_seed = manual_seed_all = staticmethod(_seed)

    @staticmethod
    def mem_get_info(device: Any = None) -> tuple[int, int]:
        return _total_and_free_memory()

    @staticmethod
    def get_device_name(device: Any = None) -> str:
        return PLATFORM_NAME

    @staticmethod
    def is_available() -> bool:
        return True

    @staticmethod
    def get_rng_state(device: Any = None) -> torch.Tensor:
        return torch.get_rng_state()

    @staticmethod
    def set_rng_state(state: torch.Tensor, device: Any = None) -> None:
        torch.set_rng_state(state)


_DEVICE_MODULE = CPUDeviceModule()


class PlatformCPU(PlatformBase):
    """verl platform for CPU-only hosts (registered as "cpu")."""

    @property
    def device_name(self) -> str:
        return PLATFORM_NAME

    @property
    def vendor_name(self) -> str:
        return PLATFORM_NAME

    @property
    def device_module(self) -> ModuleType:
        return _DEVICE_MODULE

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        # Registered after verl's accelerator platforms, so auto-detection only reaches this when none matched.
        return True

    def current_device(self) -> str:  # verl does `.to(get_device_id())`, so the id must be a valid device
        return PLATFORM_NAME

    def device_count(self) -> int:
        return 1

    set_device = synchronize = set_allocator_settings = empty_cache = staticmethod(_nothing)
    profiler_start = profiler_stop = staticmethod(_nothing)
    manual_seed = manual_seed_all = staticmethod(_seed)

    def get_device_capability(self, device_index: int = 0) -> tuple[Optional[int], Optional[int]]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        # No devices to hide on CPU; verl only reads/writes this name, so keep the CUDA one.
        return "CUDA_VISIBLE_DEVICES"

    @contextmanager
    def nvtx_range(self, msg: str):
        yield

    def ray_resource_name(self) -> str:
        return "CPU"

    def ray_resource_options(self, num_gpus: float) -> dict[str, Any]:
        # One worker process per "device": ask Ray for that many CPUs instead of GPUs.
        return {"num_cpus": num_gpus}

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None
