"""What a run prints while it trains: one short line per step (step, the rewards, the NTP / task loss, validation
figures when there are any, step time, ETA) instead of verl's dump of every metric, which stays in metrics.jsonl.
`REFINE_VERBOSE=1` (refine.verbosity) brings verl's console logger back."""

from __future__ import annotations

import time

from refine.nsp.rewards import METRIC_STEMS

_REWARD_LABELS = {"cs": "cosine reward", "binary": "exact-match reward", "hybrid": "hybrid reward"}
# (label, metric): shown when the step logged it, in this order
_LOSSES = (("NTP loss", "actor/ntp_loss_raw_ttt"), ("task SFT loss", "actor/sft_loss"),
           ("task PG loss", "actor/pg_loss"))
_VALIDATION = (("val_loss", "val_loss"), ("val_em", "val_em_score"), ("val_reward", "val_reward"),
               ("scored", "val_n_scored"))


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _number(value) -> str:
    return f"{value:.0f}" if float(value).is_integer() and abs(value) >= 1 else f"{value:.3f}"


class StepLine:
    """Formats the line of each logged step for a run of `total` steps whose reward is `reward` (a refine.reward
    name, or None when no NSP reward is trained)."""

    def __init__(self, total: int, reward: str | None, first_step: int):
        self.total = total
        stem = METRIC_STEMS.get(reward) if reward else None
        self.rewards = [(_REWARD_LABELS[stem], f"reward/{stem}_reward_mean")] if stem else []
        if stem in ("cs", "hybrid"):  # the cosine reward reads only against its chance level
            self.rewards.append(("chance", "reward/cs_reward_chance_mean"))
        if stem != "binary":
            self.rewards.append(("exact match", "reward/binary_reward_mean"))
        self.first_step = first_step
        self.started = time.monotonic()
        self.step_times: list[float] = []

    def line(self, step: int, metrics: dict) -> str:
        parts = [f"step {step}/{self.total}" if self.total else f"step {step}"]
        if step == 0 or "training/global_step" not in metrics:
            parts.append("validation")
        figures = [f"{label} {_number(metrics[key])}" for label, key in (*self.rewards, *_LOSSES, *_VALIDATION)
                   if key in metrics]
        parts += figures
        step_time = metrics.get("timing_s/step")
        if step_time is not None:
            self.step_times.append(float(step_time))
            parts.append(f"{step_time:.1f} s/step")
            left = self.total - step
            if left > 0:
                mean = sum(self.step_times) / len(self.step_times)
                parts.append(f"ETA {_duration(mean * left)}")
        return " | ".join(parts)

    def summary(self, step: int, last: dict) -> str:
        """The run's closing line: steps done, time, the last rewards, losses and validation figures."""
        took = time.monotonic() - self.started
        trained = step - self.first_step
        rate = f", {took / trained:.1f} s/step" if trained > 0 else ""
        figures = ", ".join(f"{label} {_number(last[key])}" for label, key in (*self.rewards, *_LOSSES, *_VALIDATION)
                            if key in last)
        what = f"step {step}/{self.total}" if self.total else "validation"  # a val_only run trains no step
        return f"refine: done: {what} in {_duration(took)}{rate}" + (
            f"; last {figures}" if figures else "")
