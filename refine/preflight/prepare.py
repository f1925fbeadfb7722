"""`prepare`: everything `python -m refine.main` checks before Ray starts, in order, and the Ray environment.

Stack and device; unknown keys; the official aliases; the `refine:` group, the cross-field rules, the data and
model folders (`prepare_config`); the resume-matches-the-run check; the launch checks; the memory estimate; then
the resolved config is recorded in the run folder. Each failure is one line naming the key, the value and the fix.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from refine.errors import config_error
from refine.models.cpu_kernels.interpret import apply_compute_dtype
from refine.platform import platform_env_vars
from refine.preflight.aliases import apply_official_aliases, spelled_as_typed
from refine.preflight.compose import REPO_ROOT
from refine.preflight.data_checks import check_generation_data, check_nsp_row_lengths, check_overlong, validate_data
from refine.preflight.launch_checks import check_batches_fit, check_logger, check_ray_cpus
from refine.preflight.memory_estimate import print_estimate
from refine.preflight.model_checks import check_model_dir, check_tokenizer, check_writable
from refine.preflight.quiet import quiet_warnings_env
from refine.preflight.rules import validate_refine, validates_by_generation
from refine.preflight.run_record import check_not_another_runs_folder, check_resume_matches, record_config
from refine.preflight.schema import TARGET, RefineConfig, group_of, refine_config_from
from refine.preflight.unknown_keys import check_unknown_keys
from refine.stack import check_device, check_stack

def prepare(config):
    """Aliases, validation and the Ray runtime environment, in place; returns the `RefineConfig`."""
    check_stack()  # pinned versions and an importable triton, before verl or fla is imported
    apply_compute_dtype(config)  # interpret mode: the model computes in fp16
    device = check_device(str(config.trainer.device))  # auto -> cuda/cpu; explicit cuda on a CPU host: error
    rc = prepare_config(config)  # bad input fails before Ray and the heavy imports below
    check_resume_matches(config)  # never continue another run's checkpoint silently
    check_not_another_runs_folder(config)  # nor write over a finished run's files under the same name
    check_batches_fit(config)
    check_logger(config)
    check_ray_cpus(config, device)
    print_estimate(config, rc, device)  # a run that will not fit is named before Ray's minutes of start-up
    env = platform_env_vars()
    with open_dict(config):
        config.trainer.device = device
        ray_init = config.ray_kwargs.ray_init
        runtime_env = OmegaConf.to_container(ray_init.get("runtime_env") or {}, resolve=True)
        runtime_env["env_vars"] = {**env, "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": quiet_warnings_env(),
                                   **(runtime_env.get("env_vars") or {})}
        ray_init.runtime_env = runtime_env
    for name, value in env.items():
        os.environ.setdefault(name, value)
    path = record_config(config, Path(str(config.trainer.default_local_dir)))
    print(f"refine: resolved config written to {path}", flush=True)
    return rc


def absolutize_paths(config: DictConfig, base: Path | None = None) -> None:
    """Make relative model/data/checkpoint paths absolute (Ray workers do not share the driver's cwd).

    A relative path is taken against the current directory if it exists there, else against the repo root
    (so the embedded default also works when started from elsewhere).
    """
    cwd = Path.cwd()
    roots = [cwd, REPO_ROOT] if base is None else [base]

    def fix(p):
        if p is None or str(p).startswith(("hdfs://", "pkg://", "file://")):
            return p
        p = os.path.expanduser(str(p))
        if os.path.isabs(p):
            return p
        for root in roots:
            if (root / p).exists():
                return str(root / p)
        return str(roots[0] / p)

    with open_dict(config):
        model = config.actor_rollout_ref.model
        model.path = fix(model.path)
        if model.get("tokenizer_path"):
            model.tokenizer_path = fix(model.tokenizer_path)
        for key in ("train_files", "val_files"):
            value = config.data.get(key)
            if value is None:
                continue
            config.data[key] = fix(value) if isinstance(value, str) else [fix(v) for v in value]
        config.trainer.default_local_dir = str(Path(fix(config.trainer.default_local_dir)))


def prepare_config(config: DictConfig) -> RefineConfig:
    """Aliases, unknown-key check, path resolution and the whole validation; runs before Ray starts.

    Mutates `config` (aliases moved, paths absolute, `refine` group completed with defaults) and returns the
    typed `RefineConfig`. An error about a value given through an official key names that key.
    """
    check_unknown_keys(config)  # typos (`+trainer.save_freqq=1`) would otherwise be accepted silently
    typed = apply_official_aliases(config)
    try:
        return validate(config)
    except ValueError as exc:
        message = spelled_as_typed(str(exc), typed)
        if message == str(exc):
            raise
        raise ValueError(message) from exc


def validate(config: DictConfig) -> RefineConfig:
    """Every check of an aliased config, in order: the group, the cross-field rules, the data, the model folder,
    the tokenizer-based row checks. Returns the `RefineConfig` (the config's `refine` group rewritten from it)."""
    target = OmegaConf.select(config, "refine._target_") or TARGET
    rc = refine_config_from(config)
    with open_dict(config):
        config.refine = group_of(rc, target)
    absolutize_paths(config)
    validate_refine(rc, config)
    validate_data(rc, config)
    rc = check_generation_data(rc, config)
    with open_dict(config):
        config.refine = group_of(rc, target)
    model = config.actor_rollout_ref.model
    tokenizer_path = model.get("tokenizer_path") or model.path
    if not os.path.isfile(os.path.join(str(tokenizer_path), "config.json")) and not os.path.isfile(
        os.path.join(str(tokenizer_path), "tokenizer_config.json")
    ):
        config_error("actor_rollout_ref.model.path", model.path, "no local HF model/tokenizer directory there",
              "point it at a local HF model directory (the demo's is built by scripts/build_demo_model.py)")
    check_model_dir(str(model.path))
    check_tokenizer(str(tokenizer_path))
    check_writable("trainer.default_local_dir", str(config.trainer.default_local_dir))
    needs_tokens = rc.ttt_ppo_update or rc.val_ttt_ppo_update or rc.task_sft_update
    if needs_tokens or validates_by_generation(rc, config):
        # transformers: loaded only by the phases that tokenise the data up front
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        # The model classes are not registered yet in this light-weight check, so transformers would warn that
        # config.json names an unknown model type; only the tokenizer is needed here.
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path))
        finally:
            hf_logging.set_verbosity(verbosity)
        check_nsp_row_lengths(rc, config, tokenizer)
        check_overlong(rc, config, tokenizer)
    return rc
