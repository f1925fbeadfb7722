"""`REFINE_FLA_KERNELS=interpret`: fla's own Triton kernels, executed on CPU by Triton's interpreter.

The one home of the kernel switch (which ops a process runs) and of the runtime fixes the interpreter needs
to run fla 0.6.0's kernels. Nothing here touches site-packages files; the fixes are applied only in this mode.

Which kernels a process runs (`kernel_mode()`):
- `triton`: fla's compiled Triton kernels (a CUDA machine, or `REFINE_CPU_KERNELS=0`);
- `standin`: the pure-PyTorch stand-ins of `refine.models.cpu_kernels` (default without CUDA);
- `interpret`: `REFINE_FLA_KERNELS=interpret`, fla's Triton kernels through `TRITON_INTERPRET=1`, model in fp16.

`TRITON_INTERPRET` is read by `triton.jit` when a kernel is *decorated* (triton's own helpers when triton is
imported, fla's kernels when fla is), so `refine.kernel_switch.set_interpret_env()` runs before either is imported
(`refine.models.fla_models` first thing, `python -m refine.main` before verl). The driver and every Ray worker get both variables in their environment
(`refine.platform.platform_env_vars`).

Interpreter limits met with fla 0.6.0 / Triton 3.9 (docs/kernels.md): bf16 `tl.dot` is wrong (errors ~1e10, no
exception), hence fp16; and three behaviours fixed below: no autotuning benchmarker (fix 1), a `for` index that is
a Python int (fix 2), int1 masks stored as int32 (fix 3).
"""

from __future__ import annotations

import ast

import numpy as np

from refine.kernel_switch import ENV_SWITCH, interpret_requested, set_interpret_env
from refine.models.cpu_kernels import banner
from refine.stack import installed_version

__all__ = ["BANNER", "ENV_SWITCH", "announce_once", "apply_compute_dtype", "enable_interpreter",
           "interpret_requested", "interpreter_enabled", "set_interpret_env"]

TRITON_VERSION = "3.9.0"  # the Triton whose interpreter internals the three fixes below were written against
BANNER = ("[refine] fla kernels active: fla's own Triton kernels through Triton's interpreter "
          f"({ENV_SWITCH}=interpret, TRITON_INTERPRET=1, float16; slow, for CPU checks of the GPU code path).")

_installed = False


def announce_once() -> None:
    """Print `BANNER` to stderr once per process (at start-up: when `refine.models` is imported)."""
    banner.announce_once(BANNER)


# ---- fix 1: autotuning --------------------------------------------------------------------------------------------
# `triton.autotune` times every candidate config with `triton.testing.do_bench`, which needs a GPU driver; under
# the interpreter it fails with "0 active drivers ([]). There should only be one.". Triton skips benchmarking when
# pruning leaves one config, so pruning keeps one: the one with the largest tiles (product of its integer
# meta-parameters, the first on ties), because the interpreter runs one Python pass per program and fewer, larger
# tiles are several times faster. Block sizes and warps only change how the work is tiled, never what is computed
# (the tier's tests compare the results with fla's naive references).

def _tile_size(config) -> int:
    size = 1
    for value in config.kwargs.values():
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            size *= value
    return size


def _one_config(original):
    def prune_configs(self, kwargs):
        return [max(original(self, kwargs), key=_tile_size)]

    prune_configs.__refine_interpret__ = True
    return prune_configs


# ---- fix 2: loop indices ------------------------------------------------------------------------------------------
# Compiled Triton makes the index of `for i in range(n)` / `tl.range(n)` a tensor (int32), so kernels may call
# tensor methods on it; fla does (`i_t.to(tl.int64)`). The interpreter runs the kernel's Python with Python's own
# `range`, so the index is a plain int and such calls fail ("'int' object has no attribute 'to'"). The interpreter
# already rewrites each kernel's AST before running it (`FunctionRewriter.ast_transformer`: assignments become
# `interpreter_semantic.to_tensor(value, False)`); this subclass also rebinds the index of every `range` /
# `tl.range` loop that way, as the first statement of the loop body. `tl.static_range` loops are left alone: their
# index is a compile-time constant in compiled Triton too.

def _loop_index_transformer(base):
    class LoopIndexAsTensor(base):
        def visit_For(self, node):
            node = self.generic_visit(node)
            func = node.iter.func if isinstance(node.iter, ast.Call) else None
            name = getattr(func, "id", None) or getattr(func, "attr", None)
            if name == "range" and isinstance(node.target, ast.Name):
                to_tensor = ast.Attribute(value=ast.Name(id="interpreter_semantic", ctx=ast.Load()),
                                          attr="to_tensor", ctx=ast.Load())
                rebind = ast.Assign(
                    targets=[ast.Name(id=node.target.id, ctx=ast.Store())],
                    value=ast.Call(func=to_tensor, args=[ast.Name(id=node.target.id, ctx=ast.Load()),
                                                         ast.Constant(value=False)], keywords=[]))
                node.body.insert(0, ast.copy_location(rebind, node))
            return node

    LoopIndexAsTensor.__refine_interpret__ = True
    return LoopIndexAsTensor


# ---- fix 3: boolean masks ----------------------------------------------------------------------------------------
# In Triton 3.9's interpreter, `(scalar comparison) & (block mask)` (fla's short-convolution kernel that computes
# the gradient of the initial cache: `m_t = (t < seq_len) & m_d`) yields an int1 tensor whose NumPy storage is
# int32, and the interpreter's masked load/store then refuse it: "ValueError: mask has unsupported dtype".
# Compiled Triton treats int1 as a 1-bit boolean, so masked loads and stores read an int1 mask as `data != 0`.

def _boolean_mask(original, mask_index: int):
    def masked_access(self, *args):
        mask = args[mask_index]
        if mask.data.dtype != np.bool_:
            args = (*args[:mask_index], type(mask)(mask.data != 0, mask.dtype.scalar), *args[mask_index + 1:])
        return original(self, *args)

    masked_access.__refine_interpret__ = True
    return masked_access


def enable_interpreter() -> None:
    """Apply the three fixes to the imported triton (idempotent); `set_interpret_env()` must have run first."""
    global _installed
    if _installed:
        return
    found = installed_version("triton")
    if found is None or found.split("+")[0] != TRITON_VERSION:
        raise RuntimeError(f"{ENV_SWITCH}=interpret patches the interpreter of triton {TRITON_VERSION}, found "
                           f"{found}; install triton=={TRITON_VERSION} (the one torch 2.13 requires) or unset "
                           f"{ENV_SWITCH}")
    from triton.runtime import autotuner, interpreter

    if not getattr(autotuner.Autotuner.prune_configs, "__refine_interpret__", False):
        autotuner.Autotuner.prune_configs = _one_config(autotuner.Autotuner.prune_configs)
    builder = interpreter.InterpreterBuilder
    for name, mask_index in (("create_masked_load", 1), ("create_masked_store", 2)):
        if not getattr(getattr(builder, name), "__refine_interpret__", False):
            setattr(builder, name, _boolean_mask(getattr(builder, name), mask_index))
    rewriter = interpreter.FunctionRewriter
    if not getattr(type(rewriter.ast_transformer), "__refine_interpret__", False):
        rewriter.ast_transformer = _loop_index_transformer(type(rewriter.ast_transformer))()
    _installed = True


def interpreter_enabled() -> bool:
    """Whether this process runs fla's kernels through the interpreter with the fixes applied."""
    return _installed


# ---- the model's dtype --------------------------------------------------------------------------------------------
PARAM_DTYPE_KEY = "actor_rollout_ref.actor.fsdp_config.mixed_precision.param_dtype"


def apply_compute_dtype(config) -> bool:
    """In interpret mode, make the actor compute in fp16 (FSDP's compute copy of the weights; master weights,
    optimiser and gradient reduction keep their dtypes). The interpreter's bf16 matmuls are wrong and fla's chunk
    ops refuse fp32, so fp16 is the one dtype both accept. Returns whether it changed the config."""
    if not interpret_requested():
        return False
    from omegaconf import open_dict

    fsdp = config.actor_rollout_ref.actor.fsdp_config
    with open_dict(fsdp):
        if fsdp.get("mixed_precision") is None:
            fsdp.mixed_precision = {}
        fsdp.mixed_precision.param_dtype = "fp16"
    print(f"refine: {ENV_SWITCH}=interpret: the model computes in float16 ({PARAM_DTYPE_KEY}=fp16)", flush=True)
    return True
