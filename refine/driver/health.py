"""Is the run still training? Skipped optimiser steps, non-finite losses and exploding NTP loss, per global step.

verl's engine skips an optimiser step whose gradient norm is not finite; the workers count those
(`rpc.step_optimizer`). A global step in which every optimiser step was skipped did not train. After
`refine.max_consecutive_skips` such steps in a row the run stops with `TrainingStopped` (a non-zero exit, no
checkpoint of the untrained steps, so the latest checkpoint stays the last good one). An NTP loss above ln(vocab)
(worse than uniform guessing) after it had been below is reported loudly once.
"""

from __future__ import annotations

import math


class TrainingStopped(RuntimeError):
    """The run stopped because it no longer trains (the message says why and how to resume)."""


class StepHealth:
    """Counts skipped optimiser steps across global steps and decides when to stop."""

    def __init__(self, *, max_consecutive_skips: int, vocab_size: int | None):
        self.max_consecutive_skips = max_consecutive_skips
        self.loss_ceiling = math.log(vocab_size) if vocab_size else None
        self.consecutive = 0
        self.skipped_total = 0
        self._was_below = False
        self._warned = False

    def record(self, metrics: dict[str, float], step: int) -> bool:
        """Add `actor/skipped_steps` / `actor/skipped_steps_total` to the step's metrics; True if it trained."""
        steps = sum(metrics.get(f"actor/optimizer_steps{s}", 0) for s in ("_ttt", ""))
        skipped = sum(metrics.get(f"actor/skipped_optimizer_steps{s}", 0) for s in ("_ttt", ""))
        losses = [v for k, v in metrics.items() if k.startswith("actor/") and "loss" in k]
        trained = steps > skipped and all(math.isfinite(v) for v in losses)
        self.skipped_total += int(skipped)
        metrics["actor/skipped_steps"] = float(skipped)
        metrics["actor/skipped_steps_total"] = float(self.skipped_total)
        self.consecutive = 0 if trained else self.consecutive + 1
        self._check_explosion(metrics, step)
        return trained

    @property
    def must_stop(self) -> bool:
        return self.consecutive >= self.max_consecutive_skips

    def stop_message(self, step: int, latest_checkpoint: str | None) -> str:
        where = f"the latest checkpoint is {latest_checkpoint}" if latest_checkpoint else "no checkpoint was saved"
        return (f"training stopped at step {step}: {self.consecutive} consecutive step(s) did not train (every "
                f"optimiser step skipped for a non-finite gradient norm, or a non-finite loss); {where}. Fix the "
                "cause (a nan/inf coefficient, a too large learning rate, bad data) and resume with "
                "trainer.resume_mode=auto; refine.max_consecutive_skips sets the limit")

    def _check_explosion(self, metrics: dict[str, float], step: int) -> None:
        loss = metrics.get("actor/ntp_loss_raw_ttt")
        if self.loss_ceiling is None or loss is None or not math.isfinite(loss):
            return
        if loss < self.loss_ceiling:
            self._was_below = True
        elif self._was_below and not self._warned:
            self._warned = True
            print(f"WARNING: step {step}: NTP loss {loss:.3f} is above ln(vocab) = {self.loss_ceiling:.3f} (worse "
                  "than uniform guessing) after having been below it: the model is diverging (learning rate?)",
                  flush=True)
