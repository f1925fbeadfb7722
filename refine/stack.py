"""Version guard for the pinned stack and the device check, with one-line errors.

ReFINE extends verl 0.9.1 through internal seams and runs fla 0.6.0 models, so other versions fail deep inside
those packages with long stack traces. `check_stack()` and `check_device()` fail first, with one line that names
the package (or setting), what was found, what is needed and the command that fixes it.
"""

from __future__ import annotations

import importlib
import importlib.metadata

# (distribution, required version, pip requirement that installs it). Exact pins: see pyproject.toml.
EXACT_PINS: tuple[tuple[str, str, str], ...] = (
    ("verl", "0.9.1", "verl[verl-core]==0.9.1"),
    ("flash-linear-attention", "0.6.0", "flash-linear-attention==0.6.0"),
    ("fla-core", "0.6.0", "fla-core==0.6.0"),
    ("transformers", "5.10.4", "transformers==5.10.4"),
)
TORCH_SERIES = "2.13"
TORCH_REQUIREMENT = "torch==2.13.0"
DEVICES = ("cpu", "cuda", "auto")


class StackError(RuntimeError):
    """The installed packages or the requested device cannot run ReFINE. The message is one line."""


def installed_version(distribution: str) -> str | None:
    """The installed version of `distribution`, None if it is not installed."""
    try:
        # Looked up on the module at call time, so tests can monkeypatch `importlib.metadata.version`.
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def pinned(distribution: str) -> tuple[str, str]:
    """(required version, pip requirement) of a distribution of `EXACT_PINS`."""
    for name, version, requirement in EXACT_PINS:
        if name == distribution:
            return version, requirement
    raise KeyError(f"{distribution} is not in refine.stack.EXACT_PINS")


def _public_version(version: str) -> str:
    """'2.13.0+cpu' -> '2.13.0' (the local build tag does not change the API)."""
    return version.split("+", 1)[0]


def check_stack() -> dict[str, str]:
    """Verify the pinned stack; return {distribution: installed version}. Raises `StackError` on the first problem.

    Checks verl==0.9.1, flash-linear-attention==0.6.0, fla-core==0.6.0, transformers==5.10.4, torch 2.13.x and
    that triton imports (fla imports it at module load even on CPU, where it is never run).
    """
    found: dict[str, str] = {}
    for distribution, needed, requirement in EXACT_PINS:
        version = installed_version(distribution)
        if version is None or _public_version(version) != needed:
            raise StackError(
                f"{distribution} {version or 'is not installed'}{' is installed' if version else ''} "
                f"but ReFINE needs {distribution}=={needed}; run: pip install '{requirement}'"
            )
        found[distribution] = version

    torch_version = installed_version("torch")
    if torch_version is None or not _public_version(torch_version).startswith(TORCH_SERIES + "."):
        raise StackError(
            f"torch {torch_version or 'is not installed'}{' is installed' if torch_version else ''} "
            f"but ReFINE needs torch {TORCH_SERIES}.x; run: pip install '{TORCH_REQUIREMENT}' "
            "(CPU-only machines: add --index-url https://download.pytorch.org/whl/cpu)"
        )
    found["torch"] = torch_version

    try:
        triton = importlib.import_module("triton")
    except Exception as error:  # ImportError, or a broken install raising anything else at import
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise StackError(
            f"triton cannot be imported ({reason}) but flash-linear-attention needs it importable even on CPU; "
            "run: pip install triton (the version your torch build requires)"
        ) from None
    found["triton"] = getattr(triton, "__version__", "unknown")
    return found


def check_device(requested: str, key: str = "trainer.device") -> str:
    """Validate the requested device against this machine; return the device to use ("cpu" or "cuda").

    `requested` is "cpu", "cuda", "cuda:N" or "auto" (CUDA if usable, else CPU). Asking explicitly for CUDA where
    torch has no usable CUDA device raises `StackError` naming the cause (CPU-only torch build, or no visible
    device) and the two ways out; it is never silently turned into CPU.
    """
    import torch

    if not isinstance(requested, str) or requested.split(":", 1)[0].strip().lower() not in DEVICES:
        raise ValueError(f"{key}={requested!r} is not a supported device; use one of {', '.join(DEVICES)}")
    device = requested.split(":", 1)[0].strip().lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" or torch.cuda.is_available():
        return device
    if torch.version.cuda is None:
        cause = f"the installed torch {torch.__version__} is a CPU-only build"
        fix = f"or install the CUDA build of torch (pip install --force-reinstall '{TORCH_REQUIREMENT}' from PyPI)"
    else:
        cause = f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device"
        fix = "or run on a machine with a visible NVIDIA GPU (check nvidia-smi and CUDA_VISIBLE_DEVICES)"
    raise StackError(f"{key}={requested} was requested but {cause}; set {key}=cpu, {fix}")
