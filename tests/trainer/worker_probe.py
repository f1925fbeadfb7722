"""Test-side looks into a running trainer's workers (helpers, not a test module): nothing here is on the
production path.

- `param_vector(trainer)`: all actor weights, gathered and flattened, through verl's generic
  `execute_with_func_generator` RPC (a function run on every rank; FSDP needs every rank for the gather).
- `recorded_calls(wg, *names)`: wraps worker-group RPCs so each call's (input, output) DataProto is kept, to
  check what crosses the driver-worker boundary during an inner step.
"""

from __future__ import annotations

import contextlib


def param_vector(trainer):
    """All weights of the trainer's actor, gathered and flattened (one worker call)."""
    import torch
    from verl import DataProto

    def gather(worker, data):  # runs on every rank; defined here so Ray pickles it by value
        flat = []
        for param in worker.actor.engine.module.parameters():
            full = param.full_tensor() if hasattr(param, "full_tensor") else param
            flat.append(full.detach().float().flatten().cpu())
        vector = torch.cat(flat)
        return DataProto.from_dict(tensors={"params": vector.unsqueeze(0).expand(len(data), -1).clone()})

    rows = DataProto.from_dict(tensors={"row": torch.zeros(trainer.world_size, 1)})
    return trainer.actor_rollout_wg.execute_with_func_generator(gather, rows).batch["params"][0]


@contextlib.contextmanager
def recorded_calls(wg, *names: str):
    """{name: [(input, output), ...]} of the worker group's RPCs `names` called inside the block."""
    calls: dict[str, list] = {name: [] for name in names}
    originals = {name: getattr(wg, name) for name in names}

    def recording(name):
        def call(data):
            out = originals[name](data)
            calls[name].append((data, out))
            return out

        return call

    for name in names:
        setattr(wg, name, recording(name))
    try:
        yield calls
    finally:
        for name, original in originals.items():
            setattr(wg, name, original)
