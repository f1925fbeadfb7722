"""verl CPU platform plugin: runs verl 0.9.1's Ray workers, FSDP2 engine and gloo process groups on CPU.

Importing this package activates the plugin when, and only when, the host has no accelerator (or
`VERL_PLATFORM=cpu` is set); with a GPU/NPU present, or `VERL_PLATFORM` naming another platform, importing it
changes nothing in verl. verl imports it in every process that imports verl, through the `verl.plugins` entry
point `refine = "refine.platform"` (pyproject.toml) and through `VERL_USE_EXTERNAL_MODULES`.

Public API (used by the trainer):

- `activate() -> bool`: switch verl to the CPU platform if no accelerator is present; idempotent, safe in the
  driver before `ray.init`. Raises `refine.stack.StackError` (one line) on a verl version other than
  `VERL_VERSION`.
- `platform_env_vars(extra_modules=("refine.models",)) -> dict[str, str]`: env vars for the driver and every Ray
  worker: `VERL_USE_EXTERNAL_MODULES=refine.platform,refine.models`, plus on CPU `VERL_PLATFORM=cpu` and
  `VERL_ENGINE_DEVICE=cuda`.
- `ray_runtime_env(base=None, extra_modules=...) -> dict`: `base` with those env vars merged in, for
  `ray.init(runtime_env=...)`.
- `is_active()`, `cpu_platform_wanted()`, `accelerator_present()`: state queries.
- `PATCHES`, `VERL_VERSION`, `applied_patches()`, `check_verl_version()`: the one list of verl patches
  (`refine.platform.patches`), the verl version it was written for, and the guard.
- `PlatformCPU`: the `verl.plugin.platform.PlatformBase` subclass registered as "cpu".
"""

import logging

from refine.platform.activation import (
    accelerator_present,
    activate,
    cpu_platform_wanted,
    is_active,
    platform_env_vars,
    ray_runtime_env,
)
from refine.platform.cpu_platform import PlatformCPU
from refine.platform.patches import PATCHES, VERL_VERSION, applied_patches, check_verl_version
from refine.stack import StackError

__all__ = [
    "PATCHES",
    "VERL_VERSION",
    "PlatformCPU",
    "accelerator_present",
    "activate",
    "applied_patches",
    "check_verl_version",
    "cpu_platform_wanted",
    "is_active",
    "platform_env_vars",
    "ray_runtime_env",
]

try:
    activate()
except StackError as _error:
    # verl swallows exceptions of `verl.plugins` entry points (verl/__init__.py:74-76): say it before failing.
    logging.getLogger(__name__).error("%s", _error)
    raise
