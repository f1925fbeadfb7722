"""What every actor-worker RPC shares: its dispatch, the per-rank random streams and the memory metrics.

Kept apart from `worker.py` so the driver (validation) and the fast-NSP mixin can use them without importing
verl's worker engine.
"""

from __future__ import annotations

import math

from verl.single_controller.base.decorator import make_nd_compute_dataproto_dispatch_fn

# rows split evenly over the data-parallel ranks, outputs concatenated in rank order; metrics in
# meta_info["metrics"] become one entry per rank
ACTOR_DISPATCH = make_nd_compute_dataproto_dispatch_fn(mesh_name="actor")


def worker_seed(base_seed: int, dp_rank: int, stream: int) -> int:
    """Seed of one random stream on one rank for one step (positions, sampling, validation draws)."""
    return (int(base_seed) * 1_000_003 + dp_rank * 7_919 + stream) % (2**63 - 1)


def memory_metrics(suffix: str) -> dict[str, float]:
    """Official perf/* memory metrics (0 on CPU for the device figures)."""
    import psutil
    from verl.utils.device import get_torch_device

    device = get_torch_device()
    gib = 1024**3
    return {
        f"perf/max_memory_allocated_gb{suffix}": device.max_memory_allocated() / gib,
        f"perf/max_memory_reserved_gb{suffix}": device.max_memory_reserved() / gib,
        f"perf/cpu_memory_used_gb{suffix}": psutil.virtual_memory().used / gib,
    }


def step_optimizer(engine, metrics: dict[str, list], suffix: str) -> None:
    """One optimiser step through verl's engine (clip; a non-finite gradient norm skips the update), recorded in
    `metrics`: `actor/grad_norm{suffix}` (one entry per step), `actor/optimizer_steps{suffix}` and
    `actor/skipped_optimizer_steps{suffix}` (counts of this call, as one entry each: the driver sums them)."""
    norm = float(engine.optimizer_step())
    metrics.setdefault(f"actor/grad_norm{suffix}", []).append(norm)
    steps = metrics.setdefault(f"actor/optimizer_steps{suffix}", [0])
    skipped = metrics.setdefault(f"actor/skipped_optimizer_steps{suffix}", [0])
    steps[0] += 1
    skipped[0] += 0 if math.isfinite(norm) else 1


def combined_update_loop(engine, plan, backward_pair) -> dict[str, list[float]]:
    """The official combined update of one rank (spec 2.C): per (NTP, PPO) mini-batch pair of `plan`, zero the
    gradients, `backward_pair(index, pair)` -> (raw NTP losses, raw pg losses, pg metrics), one optimiser step;
    the scheduler steps once. Returns the `_ttt` metrics (one host sync at the end)."""
    from refine.nsp.update_plan import combined_loss_metrics

    sft_raw, pg_raw, metrics = [], [], {}
    with engine.train_mode():
        for index, pair in enumerate(plan.mini_batches):
            engine.optimizer_zero_grad()
            s_raw, p_raw, pg_metrics = backward_pair(index, pair)
            sft_raw += s_raw
            pg_raw += p_raw
            for key, values in pg_metrics.items():
                metrics.setdefault(key, []).extend(values)
            step_optimizer(engine, metrics, "_ttt")
        lr = engine.lr_scheduler_step()
    metrics = {key: [float(v) for v in values] for key, values in metrics.items()}
    metrics.update({key: [value] for key, value in combined_loss_metrics(sft_raw, pg_raw, plan).items()})
    metrics["actor/lr_ttt"] = [float(lr)]
    return metrics
