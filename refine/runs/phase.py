"""Which phase a run is, read from its recorded config, and the command of the phase that follows it."""

from __future__ import annotations

DEMO = "verl/examples/refine_trainer/demo"
NEXT_PHASE = {"midtrain": "posttrain", "posttrain": "testtimetrain"}


def phase_of(config: dict) -> str:
    """midtrain / posttrain / testtimetrain / evaluation from a config container (its trainer and refine groups)."""
    refine = config.get("refine") or {}
    if (config.get("trainer") or {}).get("val_only"):
        return "testtimetrain" if refine.get("val_ttt_sft_update") or refine.get("val_ttt_ppo_update") else "evaluation"
    if refine.get("task_sft_update") or refine.get("task_ppo_update"):
        return "posttrain"
    if refine.get("ttt_sft_update") or refine.get("ttt_ppo_update"):
        return "midtrain"
    return "evaluation"


def next_phase_command(phase: str, model_dir: str) -> str | None:
    """The demo-script command that takes `model_dir` (an export of a `phase` run) into the next phase."""
    following = NEXT_PHASE.get(phase)
    return f"MODEL_PATH={model_dir} bash {DEMO}/run_{following}_demo.sh" if following else None
