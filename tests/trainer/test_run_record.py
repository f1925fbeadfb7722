"""The run folder's record: the resolved config (secrets masked), per-experiment folders, and resumes that refuse
another run's checkpoint (no Ray: `refine.main.prepare` is what runs before Ray)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from refine.preflight.prepare import prepare


def test_each_experiment_gets_its_own_run_folder(compose_config):
    a = compose_config(["trainer.experiment_name=lr_1e-4"])
    b = compose_config(["trainer.experiment_name=lr_3e-4"])
    assert a.trainer.default_local_dir != b.trainer.default_local_dir
    assert str(a.trainer.default_local_dir).endswith("refine/lr_1e-4")


def test_the_resolved_config_is_recorded_loadable_and_without_secrets(compose_config, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "s3cr3t-value-123456")
    config = compose_config([f"trainer.default_local_dir={tmp_path}",
                             "+ray_kwargs.ray_init.runtime_env.env_vars.MY_TOKEN=s3cr3t-value-123456",
                             "+ray_kwargs.ray_init.runtime_env.env_vars.NOTE=uses s3cr3t-value-123456 inside"])
    prepare(config)
    path = tmp_path / "resolved_config.yaml"
    text = path.read_text()
    assert "s3cr3t" not in text
    recorded = OmegaConf.load(path)
    assert recorded.refine.n_chunks == 2 and recorded.trainer.default_local_dir == str(tmp_path)
    assert recorded.ray_kwargs.ray_init.runtime_env.env_vars.MY_TOKEN == "***"


def test_a_resume_under_a_changed_config_stops_naming_the_keys(compose_config, tmp_path):
    auto = "trainer.resume_mode=auto"  # the verl default (the embedded demo starts fresh every time)
    prepare(compose_config([f"trainer.default_local_dir={tmp_path}", auto]))
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("2")  # a checkpoint exists
    # the same run, longer and with other logging: resumes
    prepare(compose_config([f"trainer.default_local_dir={tmp_path}", "trainer.total_training_steps=50",
                            "trainer.test_freq=7", auto]))
    with pytest.raises(ValueError, match=r"different config \(actor_rollout_ref.actor.optim.lr: 0.001 -> 0.002; "
                                         r"refine.ppo_coef: 0.2 -> 0.5\)"):
        prepare(compose_config([f"trainer.default_local_dir={tmp_path}", "refine.ppo_coef=0.5",
                                "actor_rollout_ref.actor.optim.lr=2e-3", auto]))
    # asked for explicitly: allowed
    prepare(compose_config([f"trainer.default_local_dir={tmp_path}", "refine.ppo_coef=0.5",
                            "trainer.resume_mode=disable"]))


@pytest.mark.parametrize("overrides,pattern", [
    (["data.train_batch_size=4000", "refine.mini_batch_size=4000"], r"^data.train_batch_size=4000: larger than the \d+ rows"),
    (["trainer.logger=[console,wandb]"], r"^trainer.logger=.*WANDB_API_KEY is not set"),
    (["trainer.n_gpus_per_node=2", "ray_kwargs.ray_init.num_cpus=2"], r"^ray_kwargs.ray_init.num_cpus=2: 2 worker"),
])
def test_launch_problems_fail_before_ray_naming_the_key(compose_config, tmp_path, monkeypatch, overrides, pattern):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    with pytest.raises(ValueError, match=pattern):
        prepare(compose_config([f"trainer.default_local_dir={tmp_path}", *overrides]))
