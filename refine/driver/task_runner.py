"""`RefineTaskRunner`: the Ray task runner `run_ppo(config, task_runner_class=RefineTaskRunner)` starts.

It builds the tokenizer (pad = EOS when the tokenizer has none, as officially), the raw-text datasets
(`refine.data`), the resource pool (one actor worker group) and `RefineTrainer`, then runs `fit`.
"""

from __future__ import annotations

import ray
from omegaconf import OmegaConf
from verl.single_controller.ray import RayWorkerGroup
from verl.trainer.main_ppo_v0 import BaseTaskRunner
from verl.trainer.ppo.ray_trainer import ResourcePoolManager, Role
from verl.trainer.ppo.utils import create_rl_sampler
from verl.utils import hf_tokenizer

import refine.models  # noqa: F401 - registers the model classes with the HF Auto classes
from refine.data.collate import collate_fn
from refine.data.dataset import RawTextDataset
from refine.driver.ray_trainer import RefineTrainer
from refine.preflight.schema import refine_config_from
from refine.worker.worker import RefineActorWorker


def build_datasets(config, tokenizer, rc):
    """(train, val) `RawTextDataset`s from `config.data` and the refine group (answer / data-source columns)."""
    def make(files):
        return RawTextDataset(
            files,
            tokenizer,
            prompt_key=config.data.prompt_key,
            answer_key=rc.answer_key,
            data_source_key=rc.data_source_key,
            max_prompt_length=int(config.data.max_prompt_length),
            max_response_length=int(config.data.max_response_length),
            filter_overlong=bool(config.data.get("filter_overlong_prompts", False)),
        )

    def files_of(value):
        return value if isinstance(value, str) else OmegaConf.to_container(value)

    val = make(files_of(config.data.val_files))
    if config.trainer.get("val_only", False) and not config.data.get("train_files"):
        return val, val  # a val-only run (TTT) needs no train file; the train loader is never iterated
    return make(files_of(config.data.train_files)), val


def load_tokenizer(config):
    """The model's tokenizer (local path, no remote code); pad = EOS when it has no pad token (spec 1.0)."""
    model = config.actor_rollout_ref.model
    tokenizer = hf_tokenizer(model.get("tokenizer_path") or model.path, trust_remote_code=False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_trainer(config, role_worker_mapping: dict | None = None, mapping: dict | None = None):
    """`RefineTrainer` for a prepared config, with its datasets, tokenizer and resource pool (workers not started).

    Runs in whichever process drives training: the Ray task runner (`run_ppo`) or a test.
    """
    OmegaConf.resolve(config)
    rc = refine_config_from(config)
    role_worker_mapping = {} if role_worker_mapping is None else role_worker_mapping
    mapping = {} if mapping is None else mapping
    role_worker_mapping[Role.ActorRollout] = ray.remote(RefineActorWorker)
    mapping[Role.ActorRollout] = "global_pool"
    pool_spec = {"global_pool": [config.trainer.n_gpus_per_node] * config.trainer.nnodes}
    resource_pool_manager = ResourcePoolManager(resource_pool_spec=pool_spec, mapping=mapping)

    tokenizer = load_tokenizer(config)
    train_dataset, val_dataset = build_datasets(config, tokenizer, rc)
    return RefineTrainer(
        config=config,
        tokenizer=tokenizer,
        role_worker_mapping=role_worker_mapping,
        resource_pool_manager=resource_pool_manager,
        ray_worker_group_cls=RayWorkerGroup,
        train_dataset=train_dataset,
        val_dataset=val_dataset,
        collate_fn=collate_fn,
        train_sampler=create_rl_sampler(config.data, train_dataset),
        refine_config=rc,
        pad_token_id=tokenizer.pad_token_id,
    )


class RefineTaskRunnerBase(BaseTaskRunner):
    """Plain (non-remote) task runner; `RefineTaskRunner` is its Ray actor."""

    def run(self, config):
        trainer = build_trainer(config, self.role_worker_mapping, self.mapping)
        trainer.init_workers()
        trainer.fit()


@ray.remote(num_cpus=1)
class RefineTaskRunner(RefineTaskRunnerBase):
    """Ray actor running `RefineTaskRunnerBase.run` (what `run_ppo` starts)."""
