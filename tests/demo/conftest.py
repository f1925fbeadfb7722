"""Fixtures of the demo tests: the demo-data generator module, one evaluation-file index per session, and the
command line a demo script would run."""

import importlib.util
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def make_qa():
    """`scripts/make_ruler_qa_train.py` imported as a module (scripts/ is not a package)."""
    path = REPO_ROOT / "scripts" / "make_ruler_qa_train.py"
    spec = importlib.util.spec_from_file_location("make_ruler_qa_train", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def eval_index(make_qa):
    """Sentences of every shipped data/ruler and data/longbench file (built once: a few seconds)."""
    return make_qa.EvalIndex(make_qa.eval_files(make_qa.DEFAULT_EVAL_GLOBS), 8)


DEMO = REPO_ROOT / "verl" / "examples" / "refine_trainer" / "demo"
RECORD_ARGS = """#!/bin/sh
# Records the refine.main command line (NUL-separated) instead of running it; anything else runs as Python.
if [ "$1" = "-m" ]; then
    for arg in "$@"; do printf '%s\\0' "$arg"; done > "$ARGS_OUT"
else
    exec "$REAL_PYTHON" "$@"
fi
"""


def demo_script(phase: str) -> Path:
    """verl/examples/refine_trainer/demo/run_<phase>_demo.sh."""
    return DEMO / f"run_{phase}_demo.sh"


@pytest.fixture(scope="session")
def record_command():
    """record_command(tmp_path, phase, env, *args) -> the overrides run_<phase>_demo.sh passes to
    `python -m refine.main` under `env` (a stand-in interpreter records them; nothing runs)."""
    import os
    import subprocess

    def record(tmp_path: Path, phase: str, env: dict, *args: str) -> list[str]:
        shim = tmp_path / "python"
        shim.write_text(RECORD_ARGS)
        shim.chmod(0o755)
        args_out = tmp_path / f"{phase}.args"
        full_env = {**os.environ, "PYTHON": str(shim), "REAL_PYTHON": sys.executable, "ARGS_OUT": str(args_out),
                    "MODEL_PATH": "data/demo/model", "CKPT_DIR": str(tmp_path / "ckpt"), **env}
        done = subprocess.run(["bash", str(demo_script(phase)), *args], env=full_env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        argv = args_out.read_text().split("\0")[:-1]
        assert argv[:2] == ["-m", "refine.main"]
        return argv[2:]

    return record
