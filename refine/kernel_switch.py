"""`REFINE_FLA_KERNELS`: which fla kernels a process runs, read before anything imports triton.

Dependency-free on purpose: `TRITON_INTERPRET` is read when triton is imported (triton's own `@jit` helpers are
decorated then, and verl imports triton), so `python -m refine.main` calls `set_interpret_env()` before it imports
verl, and `refine.models` does it before it imports fla. The interpreter fixes and the fp16 compute dtype live in
`refine.models.cpu_kernels.interpret`.
"""

from __future__ import annotations

import os
import sys

ENV_SWITCH = "REFINE_FLA_KERNELS"
CHOICES = ("interpret",)


def interpret_requested() -> bool:
    """Whether `REFINE_FLA_KERNELS=interpret`; ValueError (one line: variable, value, choices) for other values."""
    value = os.environ.get(ENV_SWITCH, "").strip()
    if not value:
        return False
    if value not in CHOICES:
        raise ValueError(f"{ENV_SWITCH}={value!r} is not a kernel choice; use {ENV_SWITCH}=interpret (fla's Triton "
                         "kernels through Triton's CPU interpreter) or leave it unset")
    if os.environ.get("REFINE_CPU_KERNELS", "").strip() == "1":
        raise ValueError(f"{ENV_SWITCH}=interpret and REFINE_CPU_KERNELS=1 ask for different kernels; unset one")
    return True


def set_interpret_env() -> None:
    """`TRITON_INTERPRET=1` for this process and its children, refused once triton or fla is imported without it
    (their kernels would stay compiled-mode: "Cannot call @triton.jit'd outside of the scope of a kernel")."""
    loaded = [name for name in ("triton", "fla.ops.delta_rule.chunk") if name in sys.modules]
    if loaded and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(f"{ENV_SWITCH}=interpret: {loaded[0]} was imported before refine.models without "
                           "TRITON_INTERPRET=1, so its kernels are in compiled mode; import refine.models first "
                           "(or start the process with TRITON_INTERPRET=1)")
    os.environ["TRITON_INTERPRET"] = "1"
