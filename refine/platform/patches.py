"""THE list of every change `refine.platform` makes to verl, and the version guard that protects it.

Each patch replaces one attribute of one verl module, only on CPU-only hosts (see `refine.platform.activation`),
and was written against the verl source of `VERL_VERSION`; verl's internals move between releases, so on any
other verl version the plugin refuses to load instead of patching blind.

A patch is applied as soon as its module is imported (or at once if it already is), through a post-import
hook, so activating the plugin never imports verl's heavy worker/engine modules itself.

Besides these patches the plugin only uses verl's public switches: `PlatformRegistry.register("cpu")`,
`set_platform`, and the environment variables listed in `refine.platform.activation.CPU_ENV`.
"""

from __future__ import annotations

import functools
import importlib
import importlib.abc
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable

from refine.stack import StackError, installed_version, pinned

VERL_VERSION, VERL_PIP_REQUIREMENT = pinned("verl")

_PATCH_MARK = "__refine_platform_patch__"


@dataclass(frozen=True)
class VerlPatch:
    """Replace `module.attribute` (a dotted path inside the module) with `replace(original)`."""

    module: str
    attribute: str
    replace: Callable[[Any], Any]
    why: str
    verl_version: str = VERL_VERSION

    @property
    def target(self) -> str:
        return f"{self.module}.{self.attribute}"

    def apply(self, module: Any) -> None:
        """Install the replacement on an imported `module` (idempotent)."""
        *parents, name = self.attribute.split(".")
        owner = functools.reduce(getattr, parents, module)
        original = getattr(owner, name)
        if getattr(original, _PATCH_MARK, None) == self.attribute:
            return
        replacement = self.replace(original)
        setattr(replacement, _PATCH_MARK, self.attribute)
        setattr(owner, name, replacement)


# ----------------------------------------------------------------------------------------------------------------
# Replacements (each takes verl's original and returns the stand-in)
# ----------------------------------------------------------------------------------------------------------------


def _gloo_only_process_group(original: Callable) -> Callable:
    # verl builds backend=f"cpu:gloo,{device}:{backend}", which on CPU is "cpu:gloo,cpu:gloo" and torch rejects
    # ("Duplicate device type cpu in backend string"). An explicit backend from the caller is kept.
    @functools.wraps(original)
    def initialize_global_process_group_ray(timeout_second=None, backend=None):
        return original(timeout_second=timeout_second, backend=backend or "gloo")

    return initialize_global_process_group_ray


def _unpinned_cpu_offload_policy(original: type) -> Callable:
    # verl hard-codes CPUOffloadPolicy(pin_memory=True) for forward-only FSDP2 engines (the ref policy); pinning
    # host memory needs an accelerator ("Cannot access accelerator device when none is available").
    @functools.wraps(original, updated=())
    def CPUOffloadPolicy(pin_memory: bool = True, **kwargs):  # noqa: N802 - stands in for the class name
        return original(pin_memory=False, **kwargs)

    return CPUOffloadPolicy


def _check_platform_resources(original: Callable) -> Callable:
    # verl counts only "GPU"/"NPU" Ray resources, i.e. 0 on a CPU host. Count the platform's own resource
    # ("CPU" here): each worker bundle of RayResourcePool then asks for exactly one of them.
    @functools.wraps(original)
    def _check_resource_available(self):
        import ray
        from verl.plugin.platform import get_platform

        resource = get_platform().ray_resource_name()
        available = ray.available_resources().get(resource, 0)
        required = sum(n for process_on_nodes in self.resource_pool_spec.values() for n in process_on_nodes)
        if available < required:
            raise ValueError(
                f"Ray has {available:g} free {resource} for {required} verl worker processes "
                f"(resource_pool_spec={self.resource_pool_spec}); give Ray more CPUs (ray_kwargs.ray_init.num_cpus) "
                "or lower trainer.n_gpus_per_node"
            )

    return _check_resource_available


def _no_numa_affinity(original: Callable) -> Callable:
    # NUMA affinity pins a worker to the CPUs next to *its GPU* (through NVML); on a CPU host there is no GPU, and
    # verl prints "Warning: Failed to set NUMA affinity: libnuma.so ..." from every worker.
    @functools.wraps(original)
    def set_numa_affinity():
        return None

    return set_numa_affinity


# ----------------------------------------------------------------------------------------------------------------
# THE list. Keep it the only place that touches verl.
# ----------------------------------------------------------------------------------------------------------------

PATCHES: tuple[VerlPatch, ...] = (
    VerlPatch(
        module="verl.utils.distributed",
        attribute="initialize_global_process_group_ray",
        replace=_gloo_only_process_group,
        why="default backend string duplicates 'cpu:gloo' on CPU (utils/distributed.py:89)",
    ),
    VerlPatch(
        module="verl.workers.engine_workers",
        attribute="initialize_global_process_group_ray",
        replace=_gloo_only_process_group,
        why="same function, bound by name at import (engine_workers.py:38, called at :89)",
    ),
    VerlPatch(
        module="verl.workers.engine.fsdp.transformer_impl",
        attribute="CPUOffloadPolicy",
        replace=_unpinned_cpu_offload_policy,
        why="forward-only FSDP2 engines use CPUOffloadPolicy(pin_memory=True) (fsdp/transformer_impl.py:462)",
    ),
    VerlPatch(
        module="verl.workers.engine_workers",
        attribute="set_numa_affinity",
        replace=_no_numa_affinity,
        why="GPU NUMA pinning through NVML, printed as a warning by every CPU worker (engine_workers.py:91)",
    ),
    VerlPatch(
        module="verl.single_controller.ray.base",
        attribute="ResourcePoolManager._check_resource_available",
        replace=_check_platform_resources,
        why="resource check counts only GPU/NPU Ray resources (single_controller/ray/base.py:226)",
    ),
)

assert all(patch.verl_version == VERL_VERSION for patch in PATCHES)


def check_verl_version() -> None:
    """Raise `StackError` (one line) unless the installed verl is the version the patches were written for."""
    found = installed_version("verl")
    if found != VERL_VERSION:
        raise StackError(
            f"refine.platform patches verl {VERL_VERSION} internals but found verl {found or 'not installed'}; "
            f"install it with: pip install '{VERL_PIP_REQUIREMENT}'"
        )


# ----------------------------------------------------------------------------------------------------------------
# Post-import hook: apply a patch when its module is first imported
# ----------------------------------------------------------------------------------------------------------------


class _PatchingLoader(importlib.abc.Loader):
    """Wraps a module's real loader and applies the pending patches right after the module body ran."""

    def __init__(self, loader: importlib.abc.Loader, on_loaded: Callable[[Any], None]) -> None:
        self._loader = loader
        self._on_loaded = on_loaded

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        self._on_loaded(module)

    def __getattr__(self, name: str) -> Any:  # resource readers, get_source, … of the real loader
        return getattr(self._loader, name)


class _PostImportPatcher(importlib.abc.MetaPathFinder):
    def __init__(self) -> None:
        self.pending: dict[str, list[VerlPatch]] = {}
        self._lock = threading.Lock()

    def find_spec(self, fullname, path, target=None):
        if fullname not in self.pending:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None:
            spec.loader = _PatchingLoader(spec.loader, self._apply_pending)
        return spec

    def _apply_pending(self, module) -> None:
        with self._lock:
            patches = self.pending.pop(module.__name__, [])
        for patch in patches:
            patch.apply(module)
            _APPLIED.append(patch.target)


_PATCHER = _PostImportPatcher()
_APPLIED: list[str] = []


def apply_patches() -> None:
    """Apply every patch in `PATCHES` now (imported modules) or on first import (the others). Idempotent."""
    check_verl_version()
    for patch in PATCHES:
        module = sys.modules.get(patch.module)
        if module is not None:
            patch.apply(module)
            if patch.target not in _APPLIED:
                _APPLIED.append(patch.target)
            continue
        with _PATCHER._lock:
            queued = _PATCHER.pending.setdefault(patch.module, [])
            if patch not in queued:
                queued.append(patch)
    if _PATCHER.pending and _PATCHER not in sys.meta_path:
        sys.meta_path.insert(0, _PATCHER)


def applied_patches() -> list[str]:
    """`module.attribute` of every patch installed so far in this process (for checks and logs)."""
    return list(_APPLIED)
