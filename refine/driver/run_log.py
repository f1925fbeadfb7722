"""Everything a run logs, in one place: metrics.jsonl (every metric, whatever `trainer.logger` says), verl's
tracking backends (wandb, tensorboard, ...), one short console line per step, the run's state file, and the closing
summary with the command of the next step.

verl's own `console` and `file` backends are replaced: the first prints every metric of every step (REFINE_VERBOSE=1
brings it back), the second truncates its file on a resume and exists only when asked for.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

from refine.driver.console import StepLine
from refine.driver.metrics_file import METRICS_FILE, MetricsFile
from refine.preflight.run_record import RESOLVED_CONFIG_FILE, masked
from refine.runs.phase import phase_of
from refine.runs.state import mark_end, mark_running, mark_step, record_next
from refine.verbosity import quiet_stdout, verbose

PLOT_FILE = "metrics.png"


def tracker_backends(logger) -> list[str]:
    """verl's backends this run starts: the configured ones without `file` (metrics.jsonl is written anyway) and,
    unless verbose, without `console` (the step line replaces it)."""
    names = [logger] if isinstance(logger, str) else list(logger or [])
    dropped = {"file"} if verbose() else {"file", "console"}
    return [name for name in names if name not in dropped]


class RunLog:
    """The logs of one run (segment): opened at `resume_step` (0 for a fresh run) by `RefineTrainer.fit`."""

    def __init__(self, config, run_dir: Path, reward: str | None, total: int, resume_step: int):
        self.run_dir = Path(run_dir)
        self.config = config
        self.metrics = MetricsFile(self.run_dir / METRICS_FILE, resume_step)
        self.line = StepLine(total, reward, resume_step)
        self.last_step = resume_step
        self.state = mark_running(self.run_dir, resume_step)
        trainer = config.trainer
        backends = tracker_backends(trainer.logger)
        self.tracker = None
        if backends:
            # wandb's own folder inside the run folder (else ./wandb wherever the run was started)
            os.environ.setdefault("WANDB_DIR", str(self.run_dir))
            os.environ.setdefault("TENSORBOARD_DIR", str(self.run_dir / "tensorboard"))
            from verl.utils.tracking import Tracking  # verl: only a run with a tracking backend starts one

            with quiet_stdout():  # "Creating ... logger" lines
                self.tracker = Tracking(project_name=trainer.project_name, experiment_name=trainer.experiment_name,
                                        default_backend=backends,
                                        config=masked(OmegaConf.to_container(config, resolve=True)))

    def log(self, data: dict, step: int) -> None:
        """One log call (a step, or a validation): the file, the backends, the state, the console line."""
        metrics = data
        self.metrics.log(metrics, step)
        if self.tracker is not None:
            self.tracker.log(data=metrics, step=step)
        self.last_step = max(self.last_step, step)
        mark_step(self.run_dir, self.state, self.last_step)
        if not verbose():
            print(self.line.line(step, metrics), flush=True)

    def close(self, outcome: str, error: str | None = None) -> None:
        """Shut the backends down in order (wandb's service before the process ends), then record the outcome."""
        try:
            if self.tracker is not None:
                self.tracker.finish(exit_code=0 if outcome == "finished" else 1)
                if "wandb" in self.tracker.logger:
                    import wandb  # wandb: only a run that logs to it

                    # close wandb's service connection now: left to its exit hook, it runs when Ray ends this
                    # process, finds the service already gone and prints a ConnectionResetError traceback
                    wandb.teardown(exit_code=0 if outcome == "finished" else 1)
        finally:
            self.metrics.close()
            mark_end(self.run_dir, self.state, outcome, error)

    def summary(self, history: list[dict], latest_checkpoint: int | None) -> list[str]:
        """The closing lines: the summary, the run folder's files, how to rerun and compare it. The command of the
        next step (the export of the newest checkpoint, when the phase has a next one) goes to the state file, for
        the driver to print last."""
        last = {}
        for record in history:  # the newest value of each metric (validation is logged on its own steps)
            last.update(record)
        lines = [self.line.summary(self.last_step, last)]
        files = [name for name in (METRICS_FILE, PLOT_FILE, RESOLVED_CONFIG_FILE, "predictions", "tensorboard",
                                   "wandb") if (self.run_dir / name).exists()]
        lines.append(f"  run folder: {self.run_dir} ({', '.join(files)})")
        lines.append(f"  rerun: python -m refine.main --config {self.run_dir / RESOLVED_CONFIG_FILE}")
        lines.append(f"  compare: python -m refine.runs compare {self.run_dir} <another run folder>")
        phase = phase_of(OmegaConf.to_container(self.config, resolve=True))
        if latest_checkpoint is not None and phase in ("midtrain", "posttrain"):
            step_dir = self.run_dir / f"global_step_{latest_checkpoint}"
            out = self.run_dir.parent / f"{self.run_dir.name}_step{latest_checkpoint}_hf"
            # printed last by the driver (refine.main), after every line Ray forwards; recorded for it here
            record_next(self.run_dir, self.state, f"python -m refine.export {step_dir} {out}")
        return lines
