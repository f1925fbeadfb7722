"""Checks of what a run needs from its surroundings, before Ray starts (one line each, naming the key):
enough rows for one batch, a wandb key when wandb logs online, and enough Ray CPUs for the workers on CPU."""

from __future__ import annotations

import os

from omegaconf import DictConfig

from refine.errors import config_error
from refine.preflight.data_checks import data_files


def parquet_rows(files) -> int:
    import pyarrow.parquet as pq  # pyarrow: kept off the import of the checks

    return sum(pq.ParquetFile(path).metadata.num_rows for path in data_files(files))


def check_batches_fit(config: DictConfig) -> None:
    """A batch larger than its file would leave verl's loader (drop_last) empty: "Train dataloader is empty!"."""
    data = config.data
    if not config.trainer.get("val_only", False) and data.get("train_files"):
        rows, batch = parquet_rows(data.train_files), int(data.train_batch_size)
        if batch > rows:
            config_error("data.train_batch_size", batch, f"larger than the {rows} rows of data.train_files (the loader "
                  "drops incomplete batches, so no step would run)", f"use data.train_batch_size <= {rows}")


def check_logger(config: DictConfig) -> None:
    """wandb logging online needs WANDB_API_KEY in the environment (never in the config)."""
    loggers = config.trainer.get("logger") or []
    loggers = [loggers] if isinstance(loggers, str) else list(loggers)
    offline = os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled")
    if "wandb" in loggers and not offline and not os.environ.get("WANDB_API_KEY"):
        config_error("trainer.logger", loggers, "wandb logs online but WANDB_API_KEY is not set in the environment",
              "export WANDB_API_KEY=..., or WANDB_MODE=offline, or drop wandb from trainer.logger")


def check_ray_cpus(config: DictConfig, device: str) -> None:
    """On CPU every worker (and the task runner) takes one Ray CPU; too few CPUs would hang or fail in Ray."""
    if device != "cpu":
        return
    num_cpus = config.ray_kwargs.ray_init.get("num_cpus")
    workers = int(config.trainer.n_gpus_per_node) * int(config.trainer.nnodes)
    if num_cpus is not None and workers + 1 > int(num_cpus):
        config_error("ray_kwargs.ray_init.num_cpus", num_cpus, f"{workers} worker(s) plus the task runner need "
              f"{workers + 1} Ray CPUs on a CPU run", f"set ray_kwargs.ray_init.num_cpus>={workers + 1} or fewer "
              "workers (trainer.n_gpus_per_node)")
