"""A newcomer's mistakes, answered before Ray in one line with the right advice, writing nothing: a misspelt refine.*
key (with or without `+`), a run name that already holds an earlier run; and overrides of only the data or only the
model, which are no mistake (they run the embedded default on them)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from refine.preflight.compose import REPO_ROOT


def entry_point(monkeypatch, capsys, *argv: str):
    """`python -m refine.main argv` in this process with Hydra stubbed out: (exit code, stderr, argv for Hydra)."""
    import refine.main as entry

    seen = {}
    monkeypatch.setattr(sys, "argv", ["refine.main", *argv])
    monkeypatch.setattr(entry, "_hydra_main", lambda: seen.setdefault("argv", list(sys.argv)))
    code = 0
    try:
        entry.main()
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err, seen.get("argv")


@pytest.mark.parametrize("typed", ["refine.rewrd=binary", "+refine.rewrd=binary", "refine.n_chunk=4"])
def test_a_misspelt_refine_key_is_answered_with_the_key_it_meant(monkeypatch, capsys, typed):
    code, err, hydra_argv = entry_point(monkeypatch, capsys, typed)
    meant = {"rewrd": "refine.reward", "n_chunk": "refine.n_chunks"}[typed.split(".")[1].split("=")[0]]
    assert code == 2 and hydra_argv is None  # refused before Hydra (whose advice would be "use +")
    assert err.count("\n") == 1 and f"did you mean {meant}?" in err and err.startswith(f"refine: configuration error: {typed}")


@pytest.mark.parametrize("override", ["data.train_files=data/demo/midtrain_val.parquet",
                                      "actor_rollout_ref.model.path=data/demo/model"])
def test_data_or_model_alone_runs_the_embedded_default_on_it(monkeypatch, capsys, compose_config, tmp_path, override):
    from refine.preflight.prepare import prepare

    code, _, hydra_argv = entry_point(monkeypatch, capsys, override)
    assert code == 0 and "+preset=embedded_demo" in hydra_argv and hydra_argv[-1] == override
    # what Hydra then composes validates: the demo's phase on the given data / model (no "no phase switched on")
    overrides = [arg for arg in hydra_argv[1:] if not arg.startswith(("hydra", "hydra/"))]
    config = compose_config([*overrides, f"trainer.default_local_dir={tmp_path}"], fast=False)
    rc = prepare(config)
    assert rc.ttt_ppo_update and rc.val_get_loss
    from omegaconf import OmegaConf

    key, value = override.split("=")
    assert Path(OmegaConf.select(config, key)) == REPO_ROOT / value


def test_a_phase_flag_or_preset_still_chooses_its_own_run(monkeypatch, capsys):
    for argv in (["+preset=midtrain"], ["+algorithm.ttt_sft_update=True"], ["refine.val_get_loss=true"]):
        _, _, hydra_argv = entry_point(monkeypatch, capsys, *argv)
        assert "+preset=embedded_demo" not in hydra_argv, argv


def finished_run(run_dir: Path, state: str = "finished", checkpoint: int | None = None) -> dict[str, bytes]:
    """A run folder as a finished run leaves it; returns its files' bytes (to show nothing was written)."""
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 1, "data": {"actor/ntp_loss_raw_ttt": 2.0}}) + "\n")
    (run_dir / "resolved_config.yaml").write_text("earlier: run\n")
    (run_dir / "run_state.json").write_text(json.dumps({"state": state, "step": 1, "pid": 1, "host": "elsewhere"}))
    if checkpoint is not None:
        (run_dir / "latest_checkpointed_iteration.txt").write_text(str(checkpoint))
    return {p.name: p.read_bytes() for p in run_dir.iterdir()}


def test_a_finished_run_name_stops_in_one_line_and_writes_nothing(tmp_path):
    run_dir = tmp_path / "runs" / "demo"
    before = finished_run(run_dir)
    done = subprocess.run([sys.executable, "-m", "refine.main", "trainer.resume_mode=auto",
                           f"trainer.default_local_dir={run_dir}"], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert "already holds a finished run (1 steps)" in lines[0]
    assert "pick a new trainer.experiment_name" in lines[0] and "trainer.resume_mode=disable" in lines[0]
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before  # nothing written over


@pytest.mark.parametrize("state,checkpoint,total,refused", [
    ("finished", 1, 12, False),   # asked to go on longer: resumes from its checkpoint
    ("finished", 1, 1, "finished run"),
    ("stopped", None, 12, "no checkpoint to resume"),
    ("stopped", 1, 12, False),    # a killed run with a checkpoint: resumed, as after any kill
    ("failed", None, 12, "no checkpoint to resume"),
])
def test_which_earlier_runs_a_new_run_resumes_and_which_it_refuses(tmp_path, state, checkpoint, total, refused):
    from omegaconf import OmegaConf

    from refine.preflight.run_record import check_not_another_runs_folder

    run_dir = tmp_path / "run"
    finished_run(run_dir, state, checkpoint)
    config = OmegaConf.create({"trainer": {"resume_mode": "auto", "default_local_dir": str(run_dir),
                                           "total_training_steps": total}})
    if refused:
        with pytest.raises(ValueError, match=refused):
            check_not_another_runs_folder(config)
    else:
        check_not_another_runs_folder(config)
    config.trainer.resume_mode = "disable"  # starting over is always allowed when asked for
    check_not_another_runs_folder(config)


def test_a_finished_run_whose_pointer_was_cut_still_resumes_to_go_on(tmp_path):
    """An empty latest pointer (a crash while writing it) with step folders left: the resume falls back to them
    (driver/checkpoints.py), so going on longer is still a resume, not a refusal."""
    from omegaconf import OmegaConf

    from refine.preflight.run_record import check_not_another_runs_folder

    run_dir = tmp_path / "run"
    finished_run(run_dir, "finished", checkpoint=None)
    (run_dir / "latest_checkpointed_iteration.txt").write_text("")
    (run_dir / "global_step_2").mkdir()
    config = OmegaConf.create({"trainer": {"resume_mode": "auto", "default_local_dir": str(run_dir),
                                           "total_training_steps": 3}})
    check_not_another_runs_folder(config)
    config.trainer.total_training_steps = 2
    with pytest.raises(ValueError, match=r"its checkpoint is step 2"):
        check_not_another_runs_folder(config)
