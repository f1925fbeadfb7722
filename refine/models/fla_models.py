"""fla model registration and the switch to the pure-PyTorch CPU kernels.

Importing this module
1. makes sure `triton` imports (fla needs it even on CPU) and fails with one line naming the fix otherwise;
2. imports fla's models, which registers every fla family with the HF Auto classes, and gives each family's config
   the attention-style head names verl reads (`num_attention_heads`, `num_key_value_heads`), as the family table
   (`refine.models.families`) says;
3. when CUDA is absent (or `REFINE_CPU_KERNELS=1`; `=0` forces them off) replaces the fla names the family table
   lists (`CPU_KERNEL_PATCHES`) with `refine.models.cpu_kernels`. Those names were read from fla `FLA_VERSION`; on any other
   fla version the switch refuses with a one-line error instead of patching blindly.
   With `REFINE_FLA_KERNELS=interpret` it instead keeps fla's own Triton ops and runs them through Triton's CPU
   interpreter (`refine.models.cpu_kernels.interpret`, set up before fla is imported), with a start-up banner.
The CPU kernels print a one-line banner the first time one of them runs (not at import).
"""

from __future__ import annotations

import importlib
import os

from refine.models.cpu_kernels import interpret
from refine.models.families import FAMILIES, FLA_EXTENSIONS, all_cpu_kernels
from refine.stack import installed_version, pinned

FLA_VERSION = pinned("flash-linear-attention")[0]
ENV_SWITCH = "REFINE_CPU_KERNELS"

# (fla module, attribute path in it, replacement in refine.models.cpu_kernels), from the family table
CPU_KERNEL_PATCHES: tuple[tuple[str, str, str], ...] = all_cpu_kernels()

_originals: dict[tuple[str, str], object] = {}
_MISSING = object()  # fla.layers.attn binds flash_attn_varlen_func only when flash-attn imports


def _require_triton() -> None:
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"refine.models: fla needs the `triton` package importable, even on CPU ({exc}); fix: pip install triton"
        ) from None


def installed_fla_version() -> str:
    """The installed flash-linear-attention version."""
    import fla

    return installed_version("flash-linear-attention") or fla.__version__


def cpu_kernels_wanted() -> bool:
    """`REFINE_CPU_KERNELS` = 1 / 0 decides; unset or empty means "when CUDA is absent" (and not in interpret mode)."""
    if interpret.interpret_requested():
        return False
    value = os.environ.get(ENV_SWITCH, "").strip()
    if value == "1":
        return True
    if value == "0":
        return False
    if value:
        raise ValueError(f"{ENV_SWITCH} must be 1, 0 or unset, got {value!r}")
    import torch

    return not torch.cuda.is_available()


def _owner_and_name(module_name: str, attribute_path: str):
    owner = importlib.import_module(module_name)
    *parents, name = attribute_path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    return owner, name


def install_cpu_kernels() -> None:
    """Replace every name in `CPU_KERNEL_PATCHES` by its CPU kernel (idempotent)."""
    version = installed_fla_version()
    if version != FLA_VERSION:
        raise RuntimeError(
            f"refine CPU kernels were written for flash-linear-attention=={FLA_VERSION}, found {version}; "
            f"install flash-linear-attention=={FLA_VERSION} or set {ENV_SWITCH}=0 on a CUDA machine"
        )
    from refine.models import cpu_kernels

    for module_name, attribute_path, replacement in CPU_KERNEL_PATCHES:
        owner, name = _owner_and_name(module_name, attribute_path)
        key = (module_name, attribute_path)
        if key not in _originals:
            _originals[key] = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name, _MISSING)
        setattr(owner, name, getattr(cpu_kernels, replacement))


def uninstall_cpu_kernels() -> None:
    """Put fla's own ops back (for tests and for `REFINE_CPU_KERNELS=0` after an install)."""
    for (module_name, attribute_path), original in list(_originals.items()):
        owner, name = _owner_and_name(module_name, attribute_path)
        if original is _MISSING:
            delattr(owner, name)
        else:
            setattr(owner, name, original)
        del _originals[(module_name, attribute_path)]


def cpu_kernels_installed() -> bool:
    """Whether every name in `CPU_KERNEL_PATCHES` currently points at its CPU kernel."""
    from refine.models import cpu_kernels

    for module_name, attribute_path, replacement in CPU_KERNEL_PATCHES:
        owner, name = _owner_and_name(module_name, attribute_path)
        if getattr(owner, name) is not getattr(cpu_kernels, replacement):
            return False
    return True


def _add_attention_head_names(config_class, sources: tuple[str, ...]) -> None:
    """`num_attention_heads` / `num_key_value_heads` as views of the config's own head counts.

    verl's worker reads these attention-style names (`apply_monkey_patch`); fla's configs, and the config.json of
    the published checkpoints (fla-hub/delta_net-1.3B-100B), do not have them. `sources`: the attribute the query
    heads come from, then those the key/value heads may come from (first non-None; else the query heads). A
    config.json that names them with a different value is refused rather than silently building another model.
    """
    def query_heads(self):
        return getattr(self, sources[0])

    def kv_heads(self):
        return next((getattr(self, s) for s in sources[1:] if getattr(self, s, None) is not None), query_heads(self))

    def make_setter(alias, get):
        def set_(self, value):
            if value != get(self):
                raise ValueError(f"{type(self).__name__}: {alias}={value} must equal {get(self)} "
                                 f"(from {', '.join(sources)})")
        return set_

    for alias, get in (("num_attention_heads", query_heads), ("num_key_value_heads", kv_heads)):
        if alias not in vars(config_class):
            setattr(config_class, alias, property(get, make_setter(alias, get)))


def name_attention_heads() -> None:
    """Give every fla family's config the attention-style head names (idempotent). Importing `fla.models` is what
    registers those models with AutoConfig / AutoModel / AutoModelForCausalLM."""
    for family in FAMILIES:
        if family.heads:
            _add_attention_head_names(family.config_cls(), family.heads)


def extend_fla() -> None:
    """Install `FLA_EXTENSIONS` (what the fast NSP mode needs of fla on every device; idempotent)."""
    for module_name, attribute_path, replacement in FLA_EXTENSIONS:
        owner, name = _owner_and_name(module_name, attribute_path)
        module, _, function = replacement.partition(":")
        setattr(owner, name, getattr(importlib.import_module(module), function))


def kernel_mode() -> str:
    """Which fla ops this process runs: "interpret", "standin" (the CPU stand-ins) or "triton" (fla's compiled
    kernels)."""
    if interpret.interpreter_enabled():
        return "interpret"
    return "standin" if cpu_kernels_installed() else "triton"


if interpret.interpret_requested():  # before triton / fla are imported: TRITON_INTERPRET is read at decoration
    interpret.set_interpret_env()
_require_triton()
if interpret.interpret_requested():
    interpret.enable_interpreter()
name_attention_heads()
extend_fla()
if cpu_kernels_wanted():
    install_cpu_kernels()
if interpret.interpreter_enabled():
    interpret.announce_once()
