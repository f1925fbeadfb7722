"""Compose and validate demo-script command lines without starting Ray (tests only).

`python dry_run.py COMMANDS.json` reads {name: [override, ...]} (the arguments a demo script passes to
`python -m refine.main`), composes each config exactly as `refine.main` does, runs its up-front preparation
(official-key aliases, validation of config and data files) and prints one line `DRY_RUN=<json>` with
{name: summary or {"error": message}}. A separate process, because preparation sets platform environment variables.
"""

import json
import sys

KEYS = (
    "data.train_files", "data.val_files", "data.prompt_key", "data.train_batch_size", "data.val_batch_size",
    "data.max_prompt_length", "data.max_response_length", "actor_rollout_ref.model.path",
    "actor_rollout_ref.actor.ppo_mini_batch_size", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu", "actor_rollout_ref.rollout.name",
    "actor_rollout_ref.rollout.n", "actor_rollout_ref.actor.fsdp_config.dtype", "algorithm.adv_estimator",
    "custom_reward_function.path", "trainer.device", "trainer.n_gpus_per_node", "trainer.nnodes",
    "trainer.val_before_train", "trainer.val_only", "trainer.save_freq", "trainer.test_freq", "trainer.logger",
    "trainer.total_epochs", "trainer.total_training_steps", "trainer.project_name", "trainer.experiment_name",
    "trainer.default_local_dir", "trainer.resume_mode",
)


def summary(overrides: list[str]) -> dict:
    """The checked values of the prepared config for `overrides`."""
    from omegaconf import OmegaConf

    from refine.preflight.compose import compose

    from refine.preflight.prepare import prepare

    config = compose(overrides)
    prepare(config)
    out = {}
    for key in KEYS:
        value = OmegaConf.select(config, key)
        out[key] = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    out["refine"] = OmegaConf.to_container(config.refine, resolve=True)
    return out


def main() -> None:
    with open(sys.argv[1]) as f:
        commands = json.load(f)
    results = {}
    for name, overrides in commands.items():
        try:
            results[name] = summary(overrides)
        except Exception as exc:  # noqa: BLE001 - reported to the test, which fails with the message
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
    print("DRY_RUN=" + json.dumps(results))


if __name__ == "__main__":
    main()
