"""One run folder in a few figures: name, phase, steps, state, wall time and the newest value of the metrics a
reader compares runs by. A folder is a run when it holds a recorded config, a state or a metrics file."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from refine.runs.phase import phase_of
from refine.runs.state import current_state, read_state

RECORD_FILES = ("resolved_config.yaml", "run_state.json", "metrics.jsonl")
# the figures a run is judged by, in the order they are shown (each only when the run logged it)
KEY_METRICS = (
    ("cosine reward", "reward/cs_reward_mean"),
    ("exact-match reward", "reward/binary_reward_mean"),
    ("hybrid reward", "reward/hybrid_reward_mean"),
    ("cosine chance", "reward/cs_reward_chance_mean"),
    ("NTP loss", "actor/ntp_loss_raw_ttt"),
    ("task SFT loss", "actor/sft_loss"),
    ("val_loss", "val_loss"),
    ("val_em", "val_em_score"),
    ("val_reward", "val_reward"),
)


@dataclass
class RunSummary:
    path: Path
    phase: str
    state: str
    steps: int
    wall_s: float | None
    history: list[dict] = field(repr=False)  # {"step", metric: value} per log call
    last: dict = field(default_factory=dict)  # metric -> newest value

    @property
    def name(self) -> str:
        return self.path.name


def is_run(folder: Path) -> bool:
    return folder.is_dir() and any((folder / name).is_file() for name in RECORD_FILES)


def find_runs(root: Path, depth: int = 3) -> list[Path]:
    """Run folders at or under `root` (a run's own sub-folders are not searched), sorted by path."""
    root = Path(root)
    if is_run(root):
        return [root]
    if depth == 0 or not root.is_dir():
        return []
    found = []
    for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found += find_runs(child, depth - 1)
    return found


def _history(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a line cut short by a kill
            continue
        records.append({"step": record["step"], **record["data"]})
    return records


def _config(run_dir: Path) -> dict:
    path = run_dir / "resolved_config.yaml"
    if not path.is_file():
        return {}
    import yaml  # PyYAML (omegaconf's dependency): only a run with a record is read

    return yaml.safe_load(path.read_text()) or {}


def summarize(run_dir: Path) -> RunSummary:
    run_dir = Path(run_dir)
    state_record = read_state(run_dir)
    history = _history(run_dir)
    last: dict = {}
    for record in history:
        last.update({k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))})
    trained = [r["step"] for r in history if "training/global_step" in r]
    steps = max(trained) if trained else int((state_record or {}).get("step", 0))
    return RunSummary(path=run_dir, phase=phase_of(_config(run_dir)), state=current_state(state_record) or "unknown",
                      steps=steps, wall_s=(state_record or {}).get("wall_s"), history=history, last=last)
