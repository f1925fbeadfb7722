"""When the CPU platform switches on, what switching on does, and the environment every Ray process needs."""

from __future__ import annotations

import functools
import os
import threading

PLATFORM_MODULE = "refine.platform"
DEFAULT_EXTERNAL_MODULES = ("refine.models",)

# verl's own environment switches for a CPU run (no patch needed for these):
CPU_ENV: dict[str, str] = {
    # Pick the CPU platform by name (verl's auto-detection would fall back to "nvidia" if the plugin were absent).
    "VERL_PLATFORM": "cpu",
    # Engine *class* lookup only: verl registers its FSDP engines for device "cuda"/"npu"
    # (workers/engine/fsdp/transformer_impl.py:1143); the engine itself uses get_device_name() == "cpu".
    "VERL_ENGINE_DEVICE": "cuda",
}

_lock = threading.Lock()
_active = False


@functools.cache
def accelerator_present() -> bool:
    """True if this host has an accelerator any verl built-in platform recognises (CUDA, NPU, ROCm).

    Uses verl's own relaxed probes (`use_smi_check=True`), which also answer True inside CPU-only Ray actors on a
    GPU host, so a GPU cluster never gets the CPU platform by accident.
    """
    import torch

    if torch.cuda.is_available():
        return True
    from verl.plugin.platform import PlatformRegistry

    from refine.platform.cpu_platform import PLATFORM_NAME

    for name in PlatformRegistry.registered_names():
        platform_cls = PlatformRegistry.get(name)
        if name == PLATFORM_NAME or platform_cls is None:
            continue
        try:
            if platform_cls().is_platform_available(use_smi_check=True):
                return True
        except Exception:  # a vendor probe failing means that vendor is absent
            continue
    return False


def cpu_platform_wanted() -> bool:
    """Whether the CPU platform should be active: `VERL_PLATFORM` if set, else "no accelerator present"."""
    requested = os.environ.get("VERL_PLATFORM", "").strip().lower()
    if requested:
        return requested == "cpu"
    return not accelerator_present()


def is_active() -> bool:
    """Whether `activate()` has switched the CPU platform on in this process."""
    return _active


def activate() -> bool:
    """Switch verl to the CPU platform if this host has no accelerator; return whether it is active.

    Idempotent and safe in the driver before `ray.init` (it starts nothing). On a host with an accelerator it
    does nothing at all. Otherwise it checks the verl version (`StackError` if it is not the one the patches were
    written for), registers `PlatformCPU` as "cpu" with verl's `PlatformRegistry`, makes it verl's platform
    singleton, applies `refine.platform.patches.PATCHES`, and sets `CPU_ENV` in `os.environ` (kept if already
    set) so that processes started later, Ray's included, inherit it.
    """
    global _active
    if not cpu_platform_wanted():
        return False
    from refine.platform.patches import apply_patches, check_verl_version

    check_verl_version()
    with _lock:
        if _active:
            return True
        from verl.plugin.platform import PlatformRegistry, platform_manager, set_platform

        from refine.platform.cpu_platform import PLATFORM_NAME, PlatformCPU

        if PlatformRegistry.get(PLATFORM_NAME) is not PlatformCPU:
            PlatformRegistry.register(platform=PLATFORM_NAME)(PlatformCPU)
        # get_platform() caches its first answer; replace it if something asked before we registered.
        if not isinstance(platform_manager._current_platform, PlatformCPU):
            set_platform(PlatformCPU())
        for name, value in CPU_ENV.items():
            os.environ.setdefault(name, value)
        apply_patches()
        _active = True
    return True


def _external_modules(extra_modules) -> str:
    modules: list[str] = []
    for name in [*os.environ.get("VERL_USE_EXTERNAL_MODULES", "").split(","), PLATFORM_MODULE, *extra_modules]:
        name = name.strip()
        if name and name not in modules:
            modules.append(name)
    return ",".join(modules)


def platform_env_vars(extra_modules=DEFAULT_EXTERNAL_MODULES) -> dict[str, str]:
    """Environment variables the driver and every Ray worker need, e.g. for `ray.init(runtime_env=...)`.

    Always `VERL_USE_EXTERNAL_MODULES` (existing entries, then `refine.platform`, then `extra_modules`), so that
    every verl process imports the plugin and the model registrations with a visible error if they fail (verl
    swallows errors of `verl.plugins` entry points). On a host without accelerator also `CPU_ENV`. The fla kernel
    switches (`REFINE_FLA_KERNELS`, `REFINE_CPU_KERNELS`) when set, and `TRITON_INTERPRET=1` in interpret mode.
    """
    if isinstance(extra_modules, str):
        raise ValueError(f"extra_modules={extra_modules!r} must be a sequence of module names, not one string")
    env = {"VERL_USE_EXTERNAL_MODULES": _external_modules(extra_modules)}
    # the fla kernel switch: workers must pick the same kernels, and TRITON_INTERPRET must be set before they import
    # triton (refine.models.cpu_kernels.interpret)
    for name in ("REFINE_FLA_KERNELS", "REFINE_CPU_KERNELS"):
        if os.environ.get(name, "").strip():
            env[name] = os.environ[name]
    if os.environ.get("REFINE_FLA_KERNELS", "").strip() == "interpret":
        env["TRITON_INTERPRET"] = "1"
    if cpu_platform_wanted():
        env.update({name: os.environ.get(name, value) for name, value in CPU_ENV.items()})
    return env


def ray_runtime_env(base: dict | None = None, extra_modules=DEFAULT_EXTERNAL_MODULES) -> dict:
    """`base` runtime_env (not modified) with `platform_env_vars()` merged into its `env_vars` (base wins)."""
    runtime_env = dict(base or {})
    runtime_env["env_vars"] = {**platform_env_vars(extra_modules), **dict(runtime_env.get("env_vars") or {})}
    return runtime_env
