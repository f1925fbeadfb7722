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


def test_the_demo_record_masks_no_setting_and_reruns_as_itself(compose_config, tmp_path, monkeypatch):
    """The embedded demo's record keeps every setting (21 keys that mention tokens were once masked), masks real
    secrets by name and by value, and `--config <record>` composes the same run again."""
    import os

    for name in [n for n in os.environ if n.upper().endswith(("TOKEN", "API_KEY", "PASSWORD", "SECRET"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("WANDB_API_KEY", "k3y-from-the-environment")
    config = compose_config(["+preset=embedded_demo", f"trainer.default_local_dir={tmp_path / 'a'}",
                             "+ray_kwargs.ray_init.runtime_env.env_vars.HF_TOKEN=hf_secret_value",
                             "+ray_kwargs.ray_init.runtime_env.env_vars.NOTE=k3y-from-the-environment"], fast=False)
    prepare(config)
    text = (tmp_path / "a" / "resolved_config.yaml").read_text()
    masked_lines = sorted(line.strip() for line in text.splitlines() if "***" in line)
    assert masked_lines == ["HF_TOKEN: '***'", "NOTE: '***'"]
    assert "k3y-from-the-environment" not in text and "hf_secret_value" not in text
    recorded = OmegaConf.load(tmp_path / "a" / "resolved_config.yaml")
    for key in ("actor_rollout_ref.actor.ppo_max_token_len_per_gpu", "actor_rollout_ref.rollout.max_num_batched_tokens",
                "actor_rollout_ref.rollout.skip_tokenizer_init", "refine.use_row_max_gen_tokens"):
        assert OmegaConf.select(recorded, key) == OmegaConf.select(config, key), key

    # the rerun: the record as the config (what `--config FILE` hands Hydra), prepared and recorded again
    from refine.preflight.command_line import config_file_args

    options, rest = config_file_args(["--config", str(tmp_path / "a" / "resolved_config.yaml"), "x=1"])
    assert options == ["--config-path", str(tmp_path / "a"), "--config-name", "resolved_config"] and rest == ["x=1"]
    from refine.preflight.compose import compose  # noqa: F401 - registers nothing the record needs

    again = OmegaConf.load(tmp_path / "a" / "resolved_config.yaml")
    again.trainer.default_local_dir = str(tmp_path / "b")
    prepare(again)
    rerun = (tmp_path / "b" / "resolved_config.yaml").read_text()
    assert rerun.replace(str(tmp_path / "b"), str(tmp_path / "a")) == text
