"""The three demo scripts (verl/examples/refine_trainer/demo/run_*_demo.sh).

Dry runs (fast, no Ray): each script is run with a stand-in interpreter that records the arguments it passes to
`python -m refine.main`; those are composed and validated by refine's own preparation (tests/demo/dry_run.py), and
the resulting values are compared with the official table (refine/preflight/official_presets.py) and the Q24
fixes. Smoke runs: each script with SMOKE=1 runs to the end on CPU, chained as the README prints them, in
tests/demo/test_phase_chain.py.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from refine.preflight.official_presets import PHASES, expected

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO = REPO_ROOT / "verl" / "examples" / "refine_trainer" / "demo"
RULER_TRAIN = "data/ruler_train/ruler_synthqa_tiny_512_64_train.parquet"
DEMO_ASSETS = ("data/demo/model/config.json", "data/demo/midtrain_train.parquet", "data/demo/midtrain_val.parquet")
# Data for the full-size dry runs (the files only need to exist and have the columns).
FULL_ENV = {
    "midtrain": {"TRAIN_FILES": "data/demo/midtrain_train.parquet", "VAL_FILES": "data/demo/midtrain_val.parquet"},
    "posttrain": {"TRAIN_FILES": RULER_TRAIN},
    "testtimetrain": {},
}


def official_refine(phase: str) -> dict:
    """The refine.* values of the official table (refine/preflight/official_presets.py) for `phase`."""
    return {key[len("refine."):]: value for key, value in expected(phase).items() if key.startswith("refine.")}


@pytest.fixture(scope="session")
def smoke_dir(tmp_path_factory):
    """The tiny validation files of the smoke runs, built once (the scripts reuse a filled SMOKE_DIR)."""
    missing = [p for p in DEMO_ASSETS if not (REPO_ROOT / p).exists()]
    assert not missing, f"the tiny demo model / data are missing: {missing} (scripts/build_demo_model.py)"
    out = tmp_path_factory.mktemp("smoke")
    subprocess.run([sys.executable, str(DEMO / "smoke_data.py"), "--out", str(out)], check=True, cwd=REPO_ROOT,
                   capture_output=True, timeout=300)
    return out


@pytest.fixture(scope="session")
def dry_runs(smoke_dir, tmp_path_factory, record_command):
    """{phase or phase_smoke: prepared-config summary} for the six command lines, in one validation process."""
    tmp = tmp_path_factory.mktemp("dry_run")
    commands = {}
    for phase in PHASES:
        commands[phase] = record_command(tmp, phase, {"SMOKE": "0", **FULL_ENV[phase]})
        commands[f"{phase}_smoke"] = record_command(tmp, phase, {"SMOKE": "1", "SMOKE_DIR": str(smoke_dir)})
    # Extra arguments come last, e.g. the per-batch TTT reset variant.
    commands["ttt_reset"] = record_command(tmp, "testtimetrain", {"SMOKE": "0"}, "refine.ttt_reset=batch")
    (tmp / "commands.json").write_text(json.dumps(commands))
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("dry_run.py")), str(tmp / "commands.json")],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("DRY_RUN=")), None)
    assert line, done.stderr[-3000:]
    return json.loads(line[len("DRY_RUN="):])


@pytest.mark.parametrize("phase", PHASES)
def test_official_command_line_validates_with_the_official_values(dry_runs, phase):
    """The full-size command validates, and validation keeps the official table's refine values (the command line
    itself is checked against the whole table by test_official_table.py)."""
    got = dry_runs[phase]
    assert "error" not in got, got.get("error")
    official = official_refine(phase)
    assert {k: got["refine"][k] for k in official} == official
    assert got["trainer.nnodes"] == 1
    assert got["actor_rollout_ref.model.path"] == str(REPO_ROOT / "data/demo/model")


def test_posttrain_batch_sizes_fix_q24(dry_runs):
    got = dry_runs["posttrain"]
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
    got = dry_runs["testtimetrain"]
    assert got["data.train_files"] is None and dry_runs["testtimetrain_smoke"]["data.train_files"] is None  # no dummy file
    assert dry_runs["ttt_reset"]["refine"]["ttt_reset"] == "batch" and got["refine"]["ttt_reset"] == "cumulative"
    per_gpu = got["actor_rollout_ref.actor.ppo_mini_batch_size"] * 1 // got["trainer.n_gpus_per_node"]
    assert per_gpu >= 1 and per_gpu % got["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu"] == 0
    assert got["data.val_batch_size"] >= got["refine"]["mini_batch_size"]


@pytest.mark.parametrize("phase", PHASES)
def test_smoke_command_line_is_tiny_and_on_cpu(dry_runs, smoke_dir, phase):
    got = dry_runs[f"{phase}_smoke"]
    assert "error" not in got, got.get("error")
    assert got["trainer.device"] == "cpu" and got["trainer.n_gpus_per_node"] == 1
    assert got["actor_rollout_ref.actor.fsdp_config.dtype"] == "float32"
    assert got["data.train_batch_size"] == 2 and got["data.val_batch_size"] == 2
    assert got["refine"]["n_chunks"] == 2 and got["refine"]["mini_batch_size"] == 2
    assert got["actor_rollout_ref.model.path"] == str(REPO_ROOT / "data/demo/model")
    assert Path(got["data.val_files"]).parent == smoke_dir
    # a smoke run is a real run in small: its own run folder (CKPT_DIR), a checkpoint every step for the export,
    # resumable, metrics.jsonl whatever the logger
    assert got["trainer.resume_mode"] == "auto" and got["trainer.save_freq"] == 1
    assert got["trainer.logger"] in ("console", ["console"])  # the official value: no file logger needed
    assert Path(got["trainer.default_local_dir"]).name == "ckpt"  # CKPT_DIR, as given (record_command)
    # Everything else keeps the official value.
    official = official_refine(phase)
    assert {k: v for k, v in got["refine"].items() if k in official and k not in ("n_chunks", "mini_batch_size")} == {
        k: v for k, v in official.items() if k not in ("n_chunks", "mini_batch_size")
    }
    if phase != "testtimetrain":
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
    done = subprocess.run(["bash", str(DEMO / "run_posttrain_demo.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "set MODEL_PATH" in done.stderr


# ---- smoke runs ----------------------------------------------------------------------------------------------
# The three smoke runs run in tests/demo/test_phase_chain.py, chained as the README prints them (mid-training,
# killed and resumed, exported; post-training on the export, exported; test-time training on that), so that the
# suite runs each once.
