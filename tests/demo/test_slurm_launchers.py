"""The SLURM launchers (scripts/slurm/*.sbatch), run as plain bash on a one-node "allocation".

The virtual environment's python is a stand-in that records each `-m refine.main` command line, so nothing trains:
the test checks what each launcher would run (the demo script's official command, with the GPUs and nodes of the
job) and that the test-time launcher makes one run per LongBench task.
"""

import os
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
RECORD = """#!/bin/sh
if [ "$1" = "-m" ]; then
    { for arg in "$@"; do printf '%s\\0' "$arg"; done; printf '\\n'; } >> "$ARGS_OUT"
else
    exec python3 "$@"
fi
"""


def launch(tmp_path: Path, name: str, *args: str, **env) -> list[dict[str, str]]:
    """Run scripts/slurm/<name>.sbatch; returns one {key: value} dict of overrides per recorded refine.main call."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text(RECORD)
    (venv / "bin" / "python").chmod(0o755)
    args_out = tmp_path / "calls"
    full_env = {**os.environ, "REPO": str(REPO_ROOT), "VENV": str(venv), "ARGS_OUT": str(args_out),
                "SLURM_JOB_NUM_NODES": "1", "SLURM_CPUS_PER_TASK": "8", "MODEL_PATH": "/models/m",
                "TRAIN_FILES": "/data/train.parquet", "VAL_FILES": "/data/val.parquet", **env}
    done = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "slurm" / f"{name}.sbatch"), *args], env=full_env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    calls = []
    for line in args_out.read_text().splitlines():
        argv = line.split("\0")[:-1]
        assert argv[:2] == ["-m", "refine.main"]
        calls.append(dict(a.lstrip("+").split("=", 1) for a in argv[2:]))
    return calls


@pytest.mark.parametrize("name,gpus", [("midtrain", "8"), ("posttrain", "8")])
def test_training_launchers_run_the_demo_with_the_job_resources(tmp_path, name, gpus):
    (call,) = launch(tmp_path, name, CKPT_DIR=str(tmp_path / "ckpt"))
    assert call["trainer.n_gpus_per_node"] == gpus and call["trainer.nnodes"] == "1"
    assert call["actor_rollout_ref.model.path"] == "/models/m" and call["data.train_files"] == "/data/train.parquet"
    assert call["trainer.default_local_dir"] == str(tmp_path / "ckpt")


def test_testtime_launcher_runs_once_per_task(tmp_path):
    calls = launch(tmp_path, "testtimetrain", TASKS="hotpotqa trec", GPUS_PER_NODE="2")
    assert [c["data.val_files"] for c in calls] == [
        str(REPO_ROOT / "data/longbench/hotpotqa_16384.parquet"), str(REPO_ROOT / "data/longbench/trec_16384.parquet")]
    names = [c["trainer.experiment_name"] for c in calls]
    assert names == ["testtimetrain_16k_tttrl_hotpotqa", "testtimetrain_16k_tttrl_trec"]
    assert all(c["trainer.n_gpus_per_node"] == "2" and c["trainer.val_only"] == "True" for c in calls)
    # Extra arguments reach every run (here the per-batch reset variant), after the official ones.
    calls = launch(tmp_path / "reset", "testtimetrain", "refine.ttt_reset=batch", TASKS="hotpotqa trec")
    assert [c.get("refine.ttt_reset") for c in calls] == ["batch", "batch"]


def test_testtime_launcher_covers_every_shipped_longbench_file(tmp_path):
    calls = launch(tmp_path, "testtimetrain")
    shipped = sorted(str(p) for p in (REPO_ROOT / "data" / "longbench").glob("*_16384.parquet"))
    assert len(shipped) == 14 and sorted(c["data.val_files"] for c in calls) == shipped
