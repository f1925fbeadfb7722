"""Fixtures of the trainer tests: composed configs on the shipped demo model and data, tiny sizes, fp32."""

from __future__ import annotations

import pytest

# Small enough for 2 CPU cores: 48-token rows, 2 prefixes of 3 tokens each, 2 documents per step.
FAST_OVERRIDES = [
    "+preset=embedded_demo",
    "data.max_prompt_length=48",
    "data.train_batch_size=2",
    "data.val_batch_size=2",
    "refine.n_chunks=2",
    "refine.response_length=3",
    "refine.mini_batch_size=2",
    "refine.micro_batch_size_per_gpu=2",
    "refine.log_prob_micro_batch_size_per_gpu=2",
    "trainer.val_before_train=false",
    "trainer.test_freq=-1",
    "actor_rollout_ref.actor.optim.lr=1e-3",
]


@pytest.fixture
def compose_config():
    """compose(overrides) -> the composed (unvalidated) config with the fast overrides first."""
    from refine.preflight.compose import compose

    def make(overrides=(), fast=True):
        return compose((FAST_OVERRIDES if fast else []) + list(overrides))

    return make


@pytest.fixture(scope="session")
def ruler_files(tmp_path_factory):
    """(train, val) parquet files of 4 shipped RULER test rows each, prompts cut to their last ~220 characters
    (the end keeps "Question: ...\\nAnswer:"), so they fit a tiny model's short rows."""
    import pandas as pd

    from refine.preflight.compose import REPO_ROOT

    frame = pd.read_parquet(REPO_ROOT / "data" / "ruler" / "ruler_squadqa_delta_net_4096_200_test.parquet")
    frame = frame[["prompt", "answer", "task"]].copy()
    frame["prompt"] = frame["prompt"].map(lambda text: text[-220:])
    out = tmp_path_factory.mktemp("ruler")
    frame.iloc[:4].to_parquet(out / "train.parquet")
    frame.iloc[4:8].to_parquet(out / "val.parquet")
    return out / "train.parquet", out / "val.parquet"


@pytest.fixture(scope="session")
def ray_session():
    import ray

    import refine.platform
    from refine.platform import ray_runtime_env

    refine.platform.activate()
    # address="local": always a fresh instance, never a cluster some other process started on this machine
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env=ray_runtime_env({"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}))
    yield
    ray.shutdown()


@pytest.fixture
def make_trainer(ray_session, compose_config):
    """make_trainer(overrides) -> a RefineTrainer with its workers started; torn down after the test."""
    from refine.preflight.prepare import prepare
    from refine.driver.task_runner import build_trainer

    started = []

    def make(overrides):
        config = compose_config(overrides)
        prepare(config)
        trainer = build_trainer(config)
        trainer.init_workers()
        started.append(trainer)
        return trainer

    yield make
    for trainer in started:
        close_trainer(trainer)


def close_trainer(trainer) -> None:
    """Stop a trainer's workers and free its placement groups (their names are reused by the next trainer)."""
    import ray

    if getattr(trainer, "_closed", False):
        return
    trainer._closed = True
    for worker in trainer.actor_rollout_wg._workers:
        ray.kill(worker)
    for pool in trainer.resource_pool_manager.resource_pool_dict.values():
        for pg in pool.pgs or []:
            ray.util.remove_placement_group(pg)


@pytest.fixture
def params():
    """params(trainer) -> all actor weights, flattened."""
    from tests.trainer.worker_probe import param_vector

    return param_vector


@pytest.fixture
def close():
    """close(trainer): stop its workers and free its placement groups."""
    return close_trainer


def shrunk_phase_overrides(preset: str, phase: str, ruler_files) -> list[str]:
    """`+preset=<preset>` of `phase` on the demo model, with the shipped data files and sizes shrunk to them."""
    from refine.preflight.compose import REPO_ROOT

    train, val = ruler_files
    data = {
        "midtrain": [f"data.train_files={REPO_ROOT}/data/demo/midtrain_train.parquet",
                     f"data.val_files={REPO_ROOT}/data/demo/midtrain_val.parquet"],
        "posttrain": [f"data.train_files={train}", f"data.val_files={val}"],
        "testtimetrain": [f"data.val_files={val}", "refine.answer_key=answer"],
    }[phase]
    return [f"+preset={preset}", f"actor_rollout_ref.model.path={REPO_ROOT}/data/demo/model",
            "data.max_prompt_length=256", "trainer.n_gpus_per_node=1", "refine.n_chunks=2",
            "data.train_batch_size=2", "data.val_batch_size=2", "refine.mini_batch_size=2", *data]
