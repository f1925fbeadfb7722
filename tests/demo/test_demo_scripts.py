"""The three demo scripts (verl/examples/refine_trainer/demo/run_*_demo.sh).

Dry runs (fast, no Ray): each script is run with a stand-in interpreter that records the arguments it passes to
`python -m refine.main`; those are composed and validated by refine's own preparation (tests/demo/dry_run.py), and
the resulting values are compared with the official tables (spec §3) and the Q24 fixes. Smoke runs: each script
with SMOKE=1 runs to the end on CPU with the tiny demo model.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO = REPO_ROOT / "verl" / "examples" / "refine_trainer" / "demo"
SCRIPTS = {"mid": "run_midtrain_demo.sh", "post": "run_posttrain_demo.sh", "ttt": "run_testtimetrain_demo.sh"}
RULER_TRAIN = "data/ruler_train/ruler_synthqa_tiny_512_64_train.parquet"
DEMO_ASSETS = ("data/demo/model/config.json", "data/demo/midtrain_train.parquet", "data/demo/midtrain_val.parquet")
# Data for the full-size dry runs (the files only need to exist and have the columns).
FULL_ENV = {
    "mid": {"TRAIN_FILES": "data/demo/midtrain_train.parquet", "VAL_FILES": "data/demo/midtrain_val.parquet"},
    "post": {"TRAIN_FILES": RULER_TRAIN},
    "ttt": {},
}
RECORD_ARGS = """#!/bin/sh
# Records the refine.main command line (NUL-separated) instead of running it; anything else runs as Python.
if [ "$1" = "-m" ]; then
    for arg in "$@"; do printf '%s\\0' "$arg"; done > "$ARGS_OUT"
else
    exec "$REAL_PYTHON" "$@"
fi
"""

# Official values, spec §3 tables ("-" entries omitted), per phase.
COMMON_REFINE = dict(sampling="entropy", n_chunks=8, n_per_prefix=1, sft_coef=1.0, micro_batch_size_per_gpu=2,
                     log_prob_micro_batch_size_per_gpu=2, temperature=1.0, response_length=5)
OFFICIAL = {
    "mid": dict(
        refine=dict(COMMON_REFINE, ttt_sft_update=True, ttt_ppo_update=True, val_get_loss=True, task_sft_update=False,
                    reward="cosine_similarity", ppo_coef=0.2, mini_batch_size=32),
        config={"data.prompt_key": "text", "data.max_prompt_length": 16384, "data.train_batch_size": 128,
                "data.val_batch_size": 32, "trainer.val_before_train": True, "trainer.test_freq": 10,
                "trainer.save_freq": 20, "trainer.n_gpus_per_node": 8},
    ),
    "post": dict(
        refine=dict(COMMON_REFINE, ttt_sft_update=True, ttt_ppo_update=True, task_sft_update=True,
                    task_ppo_update=False, val_get_loss=False, reward="hybrid", ppo_coef=0.2, mini_batch_size=16,
                    answer_key="answer", data_source_key="task"),
        config={"data.prompt_key": "prompt", "data.max_prompt_length": 8160, "data.max_response_length": 32,
                "actor_rollout_ref.actor.ppo_mini_batch_size": 16,
                "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": 2,
                "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu": 2, "actor_rollout_ref.rollout.n": 1,
                "trainer.val_before_train": False, "trainer.val_only": False, "trainer.test_freq": 24,
                "trainer.save_freq": 24, "trainer.n_gpus_per_node": 8},
    ),
    "ttt": dict(
        refine=dict(COMMON_REFINE, val_ttt_sft_update=True, val_ttt_ppo_update=True, ttt_sft_update=False,
                    ttt_ppo_update=False, task_sft_update=False, val_get_loss=False, reward="binary", ppo_coef=0.4,
                    mini_batch_size=4, answer_key="answers", data_source_key="task", ttt_reset="cumulative"),
        config={"data.prompt_key": "prompt", "data.max_prompt_length": 16384 - 32, "data.max_response_length": 32,
                "data.train_batch_size": 8, "data.val_batch_size": 8,
                "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": 2,
                "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu": 2, "trainer.val_before_train": True,
                "trainer.val_only": True, "trainer.test_freq": -1, "trainer.save_freq": -1,
                "trainer.n_gpus_per_node": 4},
    ),
}
ALL_PHASES = {"adv_estimator": "grpo", "rollout": "hf", "epochs": 1, "logger": "console", "nnodes": 1}


@pytest.fixture(scope="session")
def smoke_dir(tmp_path_factory):
    """The tiny validation files of the smoke runs, built once (the scripts reuse a filled SMOKE_DIR)."""
    missing = [p for p in DEMO_ASSETS if not (REPO_ROOT / p).exists()]
    assert not missing, f"the tiny demo model / data are missing: {missing} (scripts/build_demo_model.py)"
    out = tmp_path_factory.mktemp("smoke")
    subprocess.run([sys.executable, str(DEMO / "smoke_data.py"), "--out", str(out)], check=True, cwd=REPO_ROOT,
                   capture_output=True, timeout=300)
    return out


def record_command(tmp_path: Path, script: str, env: dict, *args: str) -> list[str]:
    """The overrides `script` passes to `python -m refine.main` under `env`."""
    shim = tmp_path / "python"
    shim.write_text(RECORD_ARGS)
    shim.chmod(0o755)
    args_out = tmp_path / f"{script}.args"
    full_env = {**os.environ, "PYTHON": str(shim), "REAL_PYTHON": sys.executable, "ARGS_OUT": str(args_out),
                "MODEL_PATH": "data/demo/model", "CKPT_DIR": str(tmp_path / "ckpt"), **env}
    done = subprocess.run(["bash", str(DEMO / script), *args], env=full_env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    argv = args_out.read_text().split("\0")[:-1]
    assert argv[:2] == ["-m", "refine.main"]
    return argv[2:]


@pytest.fixture(scope="session")
def dry_runs(smoke_dir, tmp_path_factory):
    """{phase or phase_smoke: prepared-config summary} for the six command lines, in one validation process."""
    tmp = tmp_path_factory.mktemp("dry_run")
    commands = {}
    for phase, script in SCRIPTS.items():
        commands[phase] = record_command(tmp, script, {"SMOKE": "0", **FULL_ENV[phase]})
        commands[f"{phase}_smoke"] = record_command(tmp, script, {"SMOKE": "1", "SMOKE_DIR": str(smoke_dir)})
    # Extra arguments come last, e.g. the per-batch TTT reset variant.
    commands["ttt_reset"] = record_command(tmp, SCRIPTS["ttt"], {"SMOKE": "0"}, "refine.ttt_reset=batch")
    (tmp / "commands.json").write_text(json.dumps(commands))
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("dry_run.py")), str(tmp / "commands.json")],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("DRY_RUN=")), None)
    assert line, done.stderr[-3000:]
    return json.loads(line[len("DRY_RUN="):])


@pytest.mark.parametrize("phase", list(SCRIPTS))
def test_official_command_line_validates_with_the_official_values(dry_runs, phase):
    got = dry_runs[phase]
    assert "error" not in got, got.get("error")
    expected = OFFICIAL[phase]
    assert {k: got["refine"][k] for k in expected["refine"]} == expected["refine"]
    assert {k: got[k] for k in expected["config"]} == expected["config"]
    assert got["algorithm.adv_estimator"] == ALL_PHASES["adv_estimator"]
    assert got["actor_rollout_ref.rollout.name"] == ALL_PHASES["rollout"]
    assert got["trainer.total_epochs"] == ALL_PHASES["epochs"] and got["trainer.logger"] == ALL_PHASES["logger"]
    assert got["trainer.nnodes"] == ALL_PHASES["nnodes"]
    assert got["actor_rollout_ref.model.path"] == str(REPO_ROOT / "data/demo/model")


def test_posttrain_batch_sizes_fix_q24(dry_runs):
    got = dry_runs["post"]
    gpus = got["trainer.n_gpus_per_node"]
    train, val = got["data.train_batch_size"], got["data.val_batch_size"]
    assert 1600 // train == 25  # ~25 steps per epoch on the official 1600-row train files (save/test every 24)
    assert train % gpus == 0 and train >= got["refine"]["mini_batch_size"]
    assert val % gpus == 0 and (val // gpus) % got["actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu"] == 0
    assert got["refine"]["data_source_key"] == "task"
    assert got["custom_reward_function.path"] == str(REPO_ROOT / "refine/scoring/reward.py")


def test_testtimetrain_task_ppo_batch_passes_the_worker_check(dry_runs):
    # verl's worker normalises ppo_mini_batch_size * rollout.n / world and asserts it divides by the micro-batch
    # (Q24 d).
    got = dry_runs["ttt"]
    assert got["data.train_files"] is None and dry_runs["ttt_smoke"]["data.train_files"] is None  # no dummy file
    assert dry_runs["ttt_reset"]["refine"]["ttt_reset"] == "batch" and got["refine"]["ttt_reset"] == "cumulative"
    per_gpu = got["actor_rollout_ref.actor.ppo_mini_batch_size"] * 1 // got["trainer.n_gpus_per_node"]
    assert per_gpu >= 1 and per_gpu % got["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu"] == 0
    assert got["data.val_batch_size"] >= got["refine"]["mini_batch_size"]


@pytest.mark.parametrize("phase", list(SCRIPTS))
def test_smoke_command_line_is_tiny_and_on_cpu(dry_runs, smoke_dir, phase):
    got = dry_runs[f"{phase}_smoke"]
    assert "error" not in got, got.get("error")
    assert got["trainer.device"] == "cpu" and got["trainer.n_gpus_per_node"] == 1
    assert got["actor_rollout_ref.actor.fsdp_config.dtype"] == "float32"
    assert got["data.train_batch_size"] == 2 and got["data.val_batch_size"] == 2
    assert got["refine"]["n_chunks"] == 2 and got["refine"]["mini_batch_size"] == 2
    assert got["actor_rollout_ref.model.path"] == str(REPO_ROOT / "data/demo/model")
    assert Path(got["data.val_files"]).parent == smoke_dir
    assert got["trainer.resume_mode"] == "disable" and got["trainer.save_freq"] == -1
    assert got["trainer.logger"] == ["console", "file"]
    assert got["trainer.default_local_dir"] == str(smoke_dir / "runs" / got["trainer.experiment_name"])
    # Everything else keeps the official value.
    official = OFFICIAL[phase]["refine"]
    assert {k: v for k, v in got["refine"].items() if k in official and k not in ("n_chunks", "mini_batch_size")} == {
        k: v for k, v in official.items() if k not in ("n_chunks", "mini_batch_size")
    }
    if phase != "ttt":
        assert got["trainer.total_training_steps"] == 2 and got["trainer.test_freq"] == 2


def test_smoke_data_fits_the_smoke_prompt_length(smoke_dir, tiny_tokenizer):
    import pandas as pd

    for name, answer_key in (("ruler_val", "answer"), ("longbench_val", "answers")):
        frame = pd.read_parquet(smoke_dir / f"{name}.parquet")
        assert len(frame) == 4 and frame["task"].nunique() == 2
        lengths = [len(ids) for ids in tiny_tokenizer(list(frame["prompt"]), add_special_tokens=False)["input_ids"]]
        assert max(lengths) <= 480 and list(frame["prompt_length"]) == lengths
        assert all(p.rstrip().endswith(("Answer:", "Type:")) for p in frame["prompt"])  # the question is kept
        assert all(len(a) >= 1 for a in frame[answer_key])
    ruler = pd.read_parquet(smoke_dir / "ruler_val.parquet")
    # The RULER rows keep a document with a gold answer where the source had one in a document.
    assert sum(any(a.lower() in p.lower() for a in ans) for p, ans in zip(ruler["prompt"], ruler["answer"])) >= 3


def test_top_level_verl_folder_never_shadows_the_installed_package():
    files = [p.relative_to(REPO_ROOT) for p in (REPO_ROOT / "verl").rglob("*")
             if p.is_file() and "__pycache__" not in p.parts]
    assert files and all(p.parent == DEMO.relative_to(REPO_ROOT) for p in files), files
    assert not any(p.name == "__init__.py" for p in files)
    find_verl = "import importlib.util; print(importlib.util.find_spec('verl').origin)"
    where = subprocess.run([sys.executable, "-c", find_verl],
                           cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.strip()
    assert "site-packages" in where, where


def test_placeholders_fail_early_with_a_clear_message(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL_PATH", "TRAIN_FILES", "SMOKE")}
    done = subprocess.run(["bash", str(DEMO / SCRIPTS["post"])], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "set MODEL_PATH" in done.stderr


# ---- smoke runs ------------------------------------------------------------------------------------------------


def read_metrics(run_dir: Path) -> list[dict]:
    """Records {step, data} of the run's metrics.jsonl (verl's file logger)."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def run_smoke(phase: str, smoke_dir: Path) -> tuple[list[dict], str]:
    env = {**os.environ, "SMOKE": "1", "SMOKE_DIR": str(smoke_dir), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(DEMO / SCRIPTS[phase])], env=env, capture_output=True, text=True, timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    runs = [d for d in (smoke_dir / "runs").iterdir() if (d / "metrics.jsonl").exists()]
    prefix = {"mid": "midtrain", "post": "posttrain", "ttt": "testtime"}[phase]
    run_dir = next(d for d in runs if d.name.startswith(prefix))
    return read_metrics(run_dir), output


@pytest.mark.slow
def test_midtrain_smoke_run_finishes_on_cpu(smoke_dir):
    records, _ = run_smoke("mid", smoke_dir)
    steps = [r["step"] for r in records if "training/global_step" in r["data"]]
    assert steps == [1, 2]
    last = records[-1]["data"]
    assert {"val_loss", "val_em_score", "reward/cs_reward_mean", "actor/sft_loss_ttt", "actor/pg_loss_ttt"} <= set(last)
    assert -1.0 <= last["reward/cs_reward_mean"] <= 1.0 and 0.0 <= last["val_em_score"] <= 1.0


@pytest.mark.slow
def test_posttrain_smoke_run_finishes_on_cpu(smoke_dir):
    records, _ = run_smoke("post", smoke_dir)
    steps = [r["step"] for r in records if "training/global_step" in r["data"]]
    assert steps == [1, 2]
    last = records[-1]["data"]
    # Inner loop (hybrid reward), outer task SFT, then validation by generation with the RULER scorer.
    assert {"reward/hybrid_reward_mean", "actor/sft_loss_ttt", "actor/sft_loss", "val_reward"} <= set(last)
    assert 0.0 <= last["val_reward"] <= 1.0 and -1.0 <= last["reward/hybrid_reward_mean"] <= 2.0


@pytest.mark.slow
def test_testtimetrain_smoke_run_finishes_on_cpu(smoke_dir):
    records, _ = run_smoke("ttt", smoke_dir)
    assert not any("training/global_step" in r["data"] for r in records)  # val_only: no training step
    assert len(records) == 1 and records[0]["step"] == 0
    assert 0.0 <= records[0]["data"]["val_reward"] <= 1.0
