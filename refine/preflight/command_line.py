"""The command line of `python -m refine.main`, read before Hydra: what it chooses to run, a recorded config to
rerun, and misspelt `refine.*` keys (Hydra would answer those with its "use +" advice, which is the wrong fix).

Light on purpose (no torch, verl or Hydra import): it runs before anything else.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from refine.preflight.aliases import OFFICIAL_ALIASES
from refine.preflight.schema import PHASE_FLAGS, REFINE_KEYS

DEMO_PRESET = "+preset=embedded_demo"
# a preset or a phase switched on chooses the run; anything else (a model, data, a setting) goes on top of the
# embedded default, so `python -m refine.main data.train_files=mine.parquet` is the demo on your data
_PHASE_KEYS = tuple([f"refine.{flag}" for flag in PHASE_FLAGS]
                    + [key for key, name in OFFICIAL_ALIASES.items() if name in PHASE_FLAGS]
                    + ["trainer.val_only"])


def _key(arg: str) -> str:
    return arg.split("=", 1)[0].lstrip("+~")


def chooses_a_run(args: list[str]) -> bool:
    """Whether the command line names its own run (a preset, a config file or name, or a phase switched on)."""
    if any(arg.startswith(("--config", "-cn", "-cp")) for arg in args):
        return True
    return any(_key(arg) in ("preset", *_PHASE_KEYS) for arg in args if "=" in arg)


def config_file_args(args: list[str]) -> tuple[list[str], list[str]]:
    """(Hydra options, the other arguments): `--config FILE` (a run's `resolved_config.yaml`) becomes Hydra's
    `--config-path DIR --config-name STEM`, which must come before any override (Hydra's parser reads one block of
    overrides). ValueError (one line) when the file is missing or not YAML."""
    options, out, i = [], [], 0
    while i < len(args):
        arg = args[i]
        if arg == "--config" or arg.startswith("--config="):
            if "=" in arg:
                value = arg.split("=", 1)[1]
            elif i + 1 < len(args):
                value, i = args[i + 1], i + 1
            else:
                raise ValueError("--config: needs a file, e.g. --config runs/refine/demo_midtrain/resolved_config.yaml")
            path = Path(value).expanduser().resolve()
            if not path.is_file() or path.suffix not in (".yaml", ".yml"):
                raise ValueError(f"--config {value}: no such YAML file. Fix: give a run's resolved_config.yaml")
            options += ["--config-path", str(path.parent), "--config-name", path.stem]
        else:
            out.append(arg)
        i += 1
    return options, out


def misspelt_refine_key(args: list[str]) -> str | None:
    """The one-line error for a `refine.<name>=value` (with or without `+`) whose name is no `refine.*` key."""
    for arg in args:
        if "=" not in arg or arg.startswith("-"):
            continue
        key = _key(arg)
        if not key.startswith("refine.") or key.count(".") != 1:
            continue
        name = key.split(".", 1)[1]
        if name in REFINE_KEYS or name == "_target_":
            continue
        close = difflib.get_close_matches(name, REFINE_KEYS, n=1, cutoff=0.6)
        hint = f"did you mean refine.{close[0]}?" if close else "see `python -m refine.main --help` for the keys"
        return f"{arg}: unknown key, no refine.* setting is called {name!r}. Fix: {hint}"
    return None
