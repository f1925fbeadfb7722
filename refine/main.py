"""Hydra entry point: `python -m refine.main [overrides]`.

With no arguments it runs the embedded default (`configs/preset/embedded_demo.yaml`: a short mid-training of the tiny
DeltaNet in `data/demo/` on CPU); so do arguments that switch on no phase and name no preset (a model, data or
settings go on top of it). A preset or a phase flag composes `configs/refine_trainer.yaml` (verl's `ppo_trainer`
plus the `refine:` group); `--config runs/<name>/resolved_config.yaml` reruns a recorded run; the official ReFINE
`+key=value` overrides work unchanged. The config and the data are validated before Ray starts; then verl's `run_ppo` runs
`RefineTaskRunner`.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from pathlib import Path

from refine.kernel_switch import interpret_requested, set_interpret_env
from refine.preflight.aliases import OFFICIAL_ALIASES, alias_conflicts
from refine.preflight.command_line import DEMO_PRESET, chooses_a_run, config_file_args, misspelt_refine_key
from refine.preflight.compose import CONFIG_DIR, DEFAULT_CONFIG, compose  # noqa: F401 - compose: the entry's API
from refine.preflight.quiet import IRRELEVANT_WARNINGS
from refine.preflight.schema import RefineConfig, describe_fields
from refine.stack import StackError, check_stack


def prepare(config):
    """The stack check, then every check before Ray and the Ray environment (`refine.preflight.prepare`), in
    place; returns the `RefineConfig`."""
    # first: REFINE_FLA_KERNELS is checked, and TRITON_INTERPRET set, when refine.models is imported (before triton)
    import refine.models.cpu_kernels.interpret  # noqa: F401

    check_stack()  # pinned versions and an importable triton, before torch, verl or fla is imported
    from refine.preflight.prepare import prepare as prepare_run  # torch, verl: the checks import them

    return prepare_run(config)


def run(config, *, prepared: bool = False) -> None:
    """Validate `config` (before Ray starts, unless `prepared`), then run ReFINE through verl's `run_ppo`."""
    if not prepared:
        prepare(config)
    # verl and Ray: imported once the checks passed
    from verl.trainer.main_ppo import run_ppo

    from refine.driver.preemption import stop_on_signals
    from refine.driver.task_runner import RefineTaskRunner
    from refine.verbosity import dropped_lines, verbose

    if not verbose():  # verl's INFO logs ("Saved model config ..." at every checkpoint), in every Ray process
        os.environ.setdefault("VERL_LOGGING_LEVEL", "WARN")
    # SIGUSR1 / SIGTERM (preemption, time limit): finish the step, checkpoint, exit PREEMPTED_EXIT_STATUS.
    # verl prints Ray's whole start-up environment (every variable) before starting it: REFINE_VERBOSE=1 shows it
    with stop_on_signals(Path(str(config.trainer.default_local_dir)), ignore_after=True), \
            dropped_lines("ray init kwargs:") as console:
        run_ppo(config, task_runner_class=RefineTaskRunner)
        print_next_command(config, console)


def print_next_command(config, console) -> None:
    """The run's next command (the export of its newest checkpoint), as the very last line: printed here, by the
    driver, once Ray has forwarded the run's summary and is shut down, so that no line of a Ray process (they come
    late, from a thread, in no fixed order) can follow it."""
    import ray  # Ray: only a run that finished gets here

    from refine.runs.state import read_state

    state = read_state(Path(str(config.trainer.default_local_dir))) or {}
    if not state.get("next"):
        return
    console.wait_for("refine: done:", timeout=30)  # the summary's first line, forwarded from the task runner
    ray.shutdown()
    print(f"next: {state['next']}", flush=True)


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
    longer trains, a checkpoint that could not be written or loaded, a stop on a signal. None for anything else."""
    # torch (checkpoints): only a run that failed gets here
    from refine.driver.checkpoints import CheckpointError
    from refine.driver.health import TrainingStopped
    from refine.driver.preemption import Preempted

    for link in _exception_chain(exc):
        # Ray's RayTaskError subclasses the cause's type: take only the original exception's own message
        if type(link) in (TrainingStopped, CheckpointError, Preempted):
            return str(link)
    return None


def stop_exit_status(exc: BaseException) -> int:
    """The exit status of a run that stopped: PREEMPTED_EXIT_STATUS after a signal (resume it), else 3."""
    from refine.driver.preemption import Preempted  # as in run_stop_reason: only a run that stopped gets here

    return next((Preempted.exit_status for link in _exception_chain(exc) if type(link) is Preempted), 3)


def worker_died(exc: BaseException, wait_s: float = 0.0) -> bool:
    """Whether `exc` (or what it wraps) is Ray's report of a dead worker process (killed, out of memory, ...), or the
    run's Ray cluster lost a node (then a surviving worker's error, such as a closed gloo connection, may come
    first)."""
    # Ray: only a run that failed gets here
    from ray.exceptions import ActorDiedError, ActorUnavailableError, WorkerCrashedError

    from refine.driver.lost_nodes import lost_nodes  # after a node loss the first error may be a peer's (gloo)

    return any(isinstance(link, (ActorDiedError, ActorUnavailableError, WorkerCrashedError))
               for link in _exception_chain(exc)) or bool(lost_nodes(wait_s))


def node_loss_wait(config) -> float:
    """Seconds a failed run waits for Ray to report a lost node: only a multi-node run can lose one alone."""
    from refine.driver.lost_nodes import NODE_LOSS_WAIT_S  # Ray: only a run that failed gets here

    return NODE_LOSS_WAIT_S if int(config.trainer.get("nnodes", 1)) > 1 else 0.0


def dead_worker_message(exc: BaseException, config) -> str:
    """What died, where the run can resume from, and the command to do it."""
    from refine.driver.checkpoints import complete_steps  # torch: only a run whose worker died gets here

    run_dir = Path(str(config.trainer.default_local_dir))
    steps = complete_steps(run_dir)
    where = (f"the latest complete checkpoint is {run_dir / f'global_step_{steps[0]}'}" if steps
             else f"no complete checkpoint in {run_dir} yet")
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()  # Ray colours the actor's name
    first = text.splitlines()[0] if text else type(exc).__name__
    from refine.driver.lost_nodes import lost_nodes  # Ray: a multi-node run names the machine that went away

    lost = lost_nodes()
    nodes = f"; lost Ray node(s): {', '.join(lost)}" if lost else ""
    return (f"a worker process died ({first}){nodes}; {where}. To resume, run the same command again with "
            "trainer.resume_mode=auto (the default) and the same trainer.default_local_dir")


def _hydra_main() -> None:
    import hydra  # Hydra: only a run needs it, not `--help` or a refused command line

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
            if stop is None and not worker_died(exc, wait_s=node_loss_wait(config)):
                raise
            print(f"refine: {stop or dead_worker_message(exc, config)}", file=sys.stderr)
            sys.exit(stop_exit_status(exc))

    main()


_HYDRA_QUIET = ["hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=disabled",
                "hydra/hydra_logging=disabled"]


def help_text() -> str:
    """`python -m refine.main --help`: each refine field with its default, official key and doc, and where the rest
    is."""
    lines = [
        "usage: python -m refine.main [key=value ...] [+preset=midtrain|posttrain|testtimetrain] [--cfg job]",
        "       python -m refine.main --config runs/<project>/<name>/resolved_config.yaml [key=value ...]  (rerun)",
        "",
        "Without a preset or a phase flag the run is the embedded default (tiny DeltaNet, bundled data, CPU) with",
        "your overrides on top. Every key of verl's ppo_trainer config works too (see configs/refine_trainer.yaml",
        "and `python -m refine.main --cfg job` for the resolved config); the official ReFINE +key=value overrides",
        "are mapped onto refine.* (docs/phases.md).",
        "",
        " ".join((RefineConfig.__doc__ or "").split("\n\n")[0].split()),
        "refine.* keys (default) and what they do (refine/preflight/schema.py, RefineConfig):",
    ]
    lines += describe_fields({name: key for key, name in OFFICIAL_ALIASES.items() if name})
    return "\n".join(lines)


def main() -> None:
    """`python -m refine.main`: no arguments runs the embedded default; overrides that name no preset and switch on
    no phase run on top of it."""
    args = sys.argv[1:]
    try:  # before anything imports triton (verl does): TRITON_INTERPRET is read on import
        if interpret_requested():
            set_interpret_env()
    except ValueError as exc:
        print(f"refine: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    if "--help" in args or "-h" in args:
        print(help_text())
        return
    try:
        # --config runs/<name>/resolved_config.yaml: rerun a recorded run
        config_options, args = config_file_args(args)
    except ValueError as exc:
        print(f"refine: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    conflict = alias_conflicts(args) or misspelt_refine_key(args)
    if conflict:
        print(f"refine: configuration error: {conflict}", file=sys.stderr)
        sys.exit(2)
    if not config_options and not chooses_a_run(args):  # a model, data or settings alone go on top of the embedded default
        args = [DEMO_PRESET, *args]
    # Hydra would otherwise write outputs/<date>/ logs into the working directory on every run; these go first
    # so that options such as --cfg job may follow the user's overrides
    sys.argv = [sys.argv[0], *config_options, *_HYDRA_QUIET, *args]
    for spec in IRRELEVANT_WARNINGS:  # this process has already started: PYTHONWARNINGS is read only at start-up
        action, message, category, module = (spec.split(":") + ["", "", ""])[:4]
        warnings.filterwarnings(action, message=message, category=FutureWarning if category else Warning,
                                module=module)
    _hydra_main()


if __name__ == "__main__":
    main()
