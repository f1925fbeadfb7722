"""What every actor-worker RPC shares: its dispatch, the per-rank random streams, the memory metrics, the update
plan of the inner loop's settings, the optimiser-step loop and the metrics reply.

Kept apart from `worker.py` so the driver (validation) and the fast-NSP mixin can use them without importing
verl's worker engine.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import psutil
from verl import DataProto
from verl.single_controller.base.decorator import make_nd_compute_dataproto_dispatch_fn
from verl.utils.device import get_torch_device

from refine.nsp.update_plan import combined_loss_metrics, normalized_ppo_mini_batch_rows, plan_combined_update
from refine.settings import NspSettings

# rows split evenly over the data-parallel ranks, outputs concatenated in rank order; metrics in
# the "metrics" of meta_info become one entry per rank
ACTOR_DISPATCH = make_nd_compute_dataproto_dispatch_fn(mesh_name="actor")


def worker_seed(base_seed: int, dp_rank: int, stream: int) -> int:
    """Seed of one random stream on one rank for one step (positions, sampling, validation draws)."""
    return (int(base_seed) * 1_000_003 + dp_rank * 7_919 + stream) % (2**63 - 1)


def memory_metrics(suffix: str) -> dict[str, float]:
    """Official perf/* memory metrics (0 on CPU for the device figures)."""
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


def optimizer_steps(engine, n_steps: int, backward_step: Callable[[int], dict], suffix: str) -> dict[str, list[float]]:
    """verl's update loop on one rank: per step i, zero the gradients, `backward_step(i)` (its metrics, a list per
    key, are collected), one counted optimiser step (`step_optimizer`); the scheduler steps once at the end.
    Returns the metrics as floats (one host sync) with `actor/lr{suffix}`."""
    metrics: dict[str, list] = {}
    with engine.train_mode():
        for index in range(n_steps):
            engine.optimizer_zero_grad()
            for key, values in backward_step(index).items():
                metrics.setdefault(key, []).extend(values)
            step_optimizer(engine, metrics, suffix)
        lr = engine.lr_scheduler_step()
    metrics = {key: [float(v) for v in values] for key, values in metrics.items()}
    metrics[f"actor/lr{suffix}"] = [float(lr)]
    return metrics


def one_entry_each(values: dict[str, float]) -> dict[str, list[float]]:
    """{key: value} as worker metrics {key: [value]}."""
    return {key: [value] for key, value in values.items()}


def metrics_reply(metrics: dict[str, list[float]], suffix: str) -> DataProto:
    """The reply of an update RPC: its metrics plus the memory metrics, under the meta_info key "metrics"."""
    return DataProto(meta_info={"metrics": {**metrics, **one_entry_each(memory_metrics(suffix))}})


def combined_update_plan(settings: NspSettings, n_docs: int):
    """The official combined-update plan of this rank's `n_docs` documents under the inner loop's settings
    (mini_batch_size, micro_batch_size_per_gpu, n_chunks, n_per_prefix, world_size, sft_coef, ppo_coef)."""
    n_chunks, ttt_n = settings.n_chunks, settings.n_per_prefix
    m_rows = normalized_ppo_mini_batch_rows(settings.mini_batch_size, n_chunks=n_chunks, ttt_n=ttt_n,
                                            world_size=settings.world_size)
    return plan_combined_update(n_docs, n_docs * n_chunks * ttt_n, ppo_mini_batch_rows=m_rows,
                                micro_batch_size=settings.micro_batch_size_per_gpu, n_chunks=n_chunks, ttt_n=ttt_n,
                                sft_loss_coef=settings.sft_coef, ppo_loss_coef=settings.ppo_coef)


def combined_update_loop(engine, plan, backward_pair) -> dict[str, list[float]]:
    """The official combined update of one rank (spec 2.C): per (NTP, PPO) mini-batch pair of `plan`,
    `backward_pair(index, pair)` -> (raw NTP losses, raw pg losses, pg metrics) inside `optimizer_steps`.
    Returns the `_ttt` metrics, the logged losses of `combined_loss_metrics` included."""
    ntp_raw, pg_raw = [], []

    def backward_step(index: int) -> dict:
        ntp, pg, pg_metrics = backward_pair(index, plan.mini_batches[index])
        ntp_raw.extend(ntp)
        pg_raw.extend(pg)
        return pg_metrics

    metrics = optimizer_steps(engine, plan.n_optimizer_steps, backward_step, "_ttt")
    return metrics | one_entry_each(combined_loss_metrics(ntp_raw, pg_raw, plan))
