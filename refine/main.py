"""Hydra entry point: `python -m refine.main [overrides]`.

With no arguments it runs the embedded default (`configs/preset/embedded_demo.yaml`: a short mid-training of the tiny
DeltaNet in `data/demo/` on CPU). With arguments it composes `configs/refine_trainer.yaml` (verl's `ppo_trainer`
plus the `refine:` group) unless `--config-name` says otherwise; the official ReFINE `+key=value` overrides work
unchanged. The config and the data are validated before Ray starts; then verl's `run_ppo` runs
`RefineTaskRunner`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
DEFAULT_CONFIG = "refine_trainer"
DEMO_PRESET = "+preset=embedded_demo"
# warnings a user cannot act on, emitted on import by verl / fla in every process (engines this project never
# uses, fla's CPU fallback that refine.models handles, verl's notice about the legacy trainer class it extends)
IRRELEVANT_WARNINGS = (
    "ignore:torchtitan engine is not available",
    "ignore:veomni engine is not available",
    "ignore:automodel engine is not available",
    "ignore:mindspeed engine is not available",
    "ignore:megatron engine is not available",
    "ignore:Triton is not supported on current platform",
    "ignore:Disabled critic as algorithm.adv_estimator",
    "ignore:'set_vital' is deprecated",
    "ignore:tokenizer.pad_token_id is None",  # pad = EOS, as officially (README, Models)
    "ignore::FutureWarning:refine.trainer.ray_trainer",
)


def quiet_warnings_env() -> str:
    """PYTHONWARNINGS for the driver and every Ray process: the user's own filters first, then ours."""
    return ",".join(filter(None, [os.environ.get("PYTHONWARNINGS", ""), *IRRELEVANT_WARNINGS]))


def compose(overrides: list[str] | None = None, config_name: str = DEFAULT_CONFIG):
    """The composed config (no validation) from `configs/`, as `python -m refine.main` would build it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import refine.trainer.config_schema  # noqa: F401 - stores the refine.* defaults in Hydra's ConfigStore

    # also callable inside `@hydra.main` (the unknown-key check composes the base config): set the running
    # Hydra aside and put it back
    outer = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            return hydra_compose(config_name=config_name, overrides=list(overrides or []))
    finally:
        if outer is not None:
            GlobalHydra.instance().initialize(outer)


def prepare(config):
    """Aliases, validation and the Ray runtime environment, in place; returns the `RefineConfig`."""
    from omegaconf import OmegaConf, open_dict

    from refine.trainer.config import prepare_config

    from refine.stack import check_device, check_stack

    # first: REFINE_FLA_KERNELS is checked, and TRITON_INTERPRET set, when refine.models is imported (before triton)
    from refine.models.cpu_kernels.interpret import apply_compute_dtype

    check_stack()  # pinned versions and an importable triton, before verl or fla is imported
    apply_compute_dtype(config)  # interpret mode: the model computes in fp16
    device = check_device(str(config.trainer.device))  # auto -> cuda/cpu; explicit cuda on a CPU host: error
    rc = prepare_config(config)  # bad input fails before Ray and the heavy imports below
    from refine.trainer.run_record import check_resume_matches, record_config

    check_resume_matches(config)  # never continue another run's checkpoint silently
    from refine.trainer.launch_checks import check_batches_fit, check_logger, check_ray_cpus

    check_batches_fit(config)
    check_logger(config)
    check_ray_cpus(config, device)
    from refine.trainer.memory_estimate import print_estimate

    print_estimate(config, rc, device)  # a run that will not fit is named before Ray's minutes of start-up
    from refine.platform import platform_env_vars

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


def run(config, *, prepared: bool = False) -> None:
    """Validate `config` (before Ray starts, unless `prepared`), then run ReFINE through verl's `run_ppo`."""
    if not prepared:
        prepare(config)
    from verl.trainer.main_ppo import run_ppo

    from refine.trainer.task_runner import RefineTaskRunner

    run_ppo(config, task_runner_class=RefineTaskRunner)


def _exception_chain(exc: BaseException | None):
    """`exc` and what it wraps: Ray's task errors keep the worker-side exception in `.cause`, Python in
    `__cause__`."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        cause = getattr(exc, "cause", None)
        exc = cause if isinstance(cause, BaseException) else exc.__cause__


def run_stop_reason(exc: BaseException) -> str | None:
    """The one-line reason when `exc` is (or wraps, e.g. as Ray's task error) a ReFINE stop: training that no
    longer trains, or a checkpoint that could not be written. None for anything else."""
    from refine.trainer.checkpoints import CheckpointError
    from refine.trainer.health import TrainingStopped

    for link in _exception_chain(exc):
        # Ray's RayTaskError subclasses the cause's type: take only the original exception's own message
        if type(link) in (TrainingStopped, CheckpointError):
            return str(link)
    return None


def worker_died(exc: BaseException) -> bool:
    """Whether `exc` (or what it wraps) is Ray's report of a dead worker process (killed, out of memory, ...)."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError, WorkerCrashedError

    return any(isinstance(link, (ActorDiedError, ActorUnavailableError, WorkerCrashedError))
               for link in _exception_chain(exc))


def dead_worker_message(exc: BaseException, config) -> str:
    """What died, where the run can resume from, and the command to do it."""
    from refine.trainer.checkpoints import complete_steps

    run_dir = Path(str(config.trainer.default_local_dir))
    steps = complete_steps(run_dir)
    where = (f"the latest complete checkpoint is {run_dir / f'global_step_{steps[0]}'}" if steps
             else f"no complete checkpoint in {run_dir} yet")
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (f"a worker process died ({first}); {where}. To resume, run the same command again with "
            "trainer.resume_mode=auto (the default) and the same trainer.default_local_dir")


def _hydra_main() -> None:
    import hydra

    import refine.trainer.config_schema  # noqa: F401 - stores the refine.* defaults in Hydra's ConfigStore
    from refine.stack import StackError

    @hydra.main(config_path=str(CONFIG_DIR), config_name=DEFAULT_CONFIG, version_base=None)
    def main(config) -> None:
        try:
            prepare(config)
        except (ValueError, StackError) as exc:
            # Bad input or a wrong stack: one clear line (key, value, fix) instead of a traceback.
            print(f"refine: configuration error: {exc}", file=sys.stderr)
            sys.exit(2)
        try:
            run(config, prepared=True)
        except Exception as exc:  # noqa: BLE001 - only ReFINE's own stops and dead workers get one line
            stop = run_stop_reason(exc)
            if stop is None and not worker_died(exc):
                raise
            print(f"refine: {stop or dead_worker_message(exc, config)}", file=sys.stderr)
            sys.exit(3)

    main()


# arguments that choose what to train on; without any of them the run is the embedded default plus the overrides
_CHOOSES_A_RUN = ("+preset=", "preset=", "actor_rollout_ref.model.path=", "data.train_files=", "data.val_files=")
_HYDRA_QUIET = ["hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=disabled",
                "hydra/hydra_logging=disabled"]


def help_text() -> str:
    """`python -m refine.main --help`: each refine field with its default, official key and doc, and where the rest
    is."""
    from refine.trainer.config import OFFICIAL_ALIASES
    from refine.trainer.config_schema import RefineConfig, describe_fields

    lines = [
        "usage: python -m refine.main [key=value ...] [+preset=midtrain|posttrain|testtimetrain] [--cfg job]",
        "",
        "With no model or data argument the run is the embedded default (tiny DeltaNet, bundled data, CPU) with",
        "your overrides on top. Every key of verl's ppo_trainer config works too (see configs/refine_trainer.yaml",
        "and `python -m refine.main --cfg job` for the resolved config); the official ReFINE +key=value overrides",
        "are mapped onto refine.* (docs/phases.md).",
        "",
        " ".join((RefineConfig.__doc__ or "").split("\n\n")[0].split()),
        "refine.* keys (default) and what they do (refine/trainer/config_schema.py, RefineConfig):",
    ]
    lines += describe_fields({name: key for key, name in OFFICIAL_ALIASES.items() if name})
    return "\n".join(lines)


def main() -> None:
    """`python -m refine.main`: no arguments runs the embedded default; overrides that choose no model, data or
    preset run on top of it."""
    args = sys.argv[1:]
    from refine.kernel_switch import interpret_requested, set_interpret_env

    try:  # before anything imports triton (verl does): TRITON_INTERPRET is read on import
        if interpret_requested():
            set_interpret_env()
    except ValueError as exc:
        print(f"refine: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    if "--help" in args or "-h" in args:
        print(help_text())
        return
    from refine.trainer.config import alias_conflicts

    conflict = alias_conflicts(args)
    if conflict:
        print(f"refine: configuration error: {conflict}", file=sys.stderr)
        sys.exit(2)
    if "--config-name" not in args and not any(arg.startswith(_CHOOSES_A_RUN) for arg in args):
        args = [DEMO_PRESET, *args]
    # Hydra would otherwise write outputs/<date>/ logs into the working directory on every run; these go first
    # so that options such as --cfg job may follow the user's overrides
    sys.argv = [sys.argv[0], *_HYDRA_QUIET, *args]
    import warnings

    for spec in IRRELEVANT_WARNINGS:  # this process has already started: PYTHONWARNINGS is read only at start-up
        action, message, category, module = (spec.split(":") + ["", "", ""])[:4]
        warnings.filterwarnings(action, message=message, category=FutureWarning if category else Warning,
                                module=module)
    _hydra_main()


if __name__ == "__main__":
    main()
