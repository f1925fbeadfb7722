"""The run's logs without Ray: metrics.jsonl across a resume (every step once), the run state (a killed run reads as
stopped), the console's step line, and which verl backends a run starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from refine.driver.console import StepLine
from refine.driver.metrics_file import MetricsFile, read_records
from refine.driver.run_log import tracker_backends
from refine.runs.state import current_state, mark_end, mark_running, read_state


def test_a_resumed_metrics_file_keeps_the_steps_up_to_its_checkpoint_once(tmp_path):
    path = tmp_path / "metrics.jsonl"
    first = MetricsFile(path, resume_step=0)
    for step in (0, 1, 2, 3):
        first.log({"loss": float(step)}, step)
    first.close()
    with open(path, "a") as handle:  # a line cut short by the kill
        handle.write('{"step": 4, "da')
    resumed = MetricsFile(path, resume_step=2)  # the checkpoint was step 2: steps 3 and 4 are trained again
    for step in (3, 4):
        resumed.log({"loss": 10.0 + step}, step)
    resumed.close()
    lines = path.read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [0, 1, 2, 3, 4]
    assert [r["data"]["loss"] for r in read_records(path)] == [0.0, 1.0, 2.0, 13.0, 14.0]
    fresh = MetricsFile(path, resume_step=0)  # a fresh start (resume_mode=disable) empties it
    fresh.close()
    assert path.read_text() == ""


def test_a_killed_run_reads_as_stopped_and_an_ended_one_as_it_ended(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    state = mark_running(tmp_path, 0)
    assert current_state(read_state(tmp_path)) == "running"  # this process: alive
    state["pid"] = dead.pid  # the process that wrote "running" is gone (SIGKILL, preemption)
    (tmp_path / "run_state.json").write_text(json.dumps(state))
    assert current_state(read_state(tmp_path)) == "stopped"
    state["host"] = "another-host"  # cannot be checked from here: taken as written
    (tmp_path / "run_state.json").write_text(json.dumps(state))
    assert current_state(read_state(tmp_path)) == "running"
    mark_end(tmp_path, state, "failed", "boom")
    assert current_state(read_state(tmp_path)) == "failed" and read_state(tmp_path)["error"] == "boom"
    again = mark_running(tmp_path, 3)  # a resume keeps the wall time of the segments before
    assert again["wall_s_before"] == read_state(tmp_path)["wall_s_before"] > 0


def test_the_step_line_shows_the_trained_reward_its_chance_exact_match_loss_and_eta():
    line = StepLine(total=12, reward="cosine_similarity", first_step=0)
    metrics = {"reward/cs_reward_mean": 0.2513, "reward/cs_reward_chance_mean": 0.15, "reward/binary_reward_mean": 0.15,
               "actor/ntp_loss_raw_ttt": 2.4061, "timing_s/step": 2.0, "training/global_step": 3}
    assert line.line(3, metrics) == ("step 3/12 | cosine reward 0.251 | chance 0.150 | exact match 0.150 | "
                                     "NTP loss 2.406 | 2.0 s/step | ETA 0:18")  # 9 steps left x 2.0 s
    binary = StepLine(total=2, reward="binary", first_step=0)
    assert binary.line(0, {"val_reward": 0.5}) == "step 0/2 | validation | val_reward 0.500"


def test_verls_console_and_file_backends_are_replaced_unless_verbose(monkeypatch):
    monkeypatch.delenv("REFINE_VERBOSE", raising=False)
    assert tracker_backends(["console", "file", "wandb"]) == ["wandb"] and tracker_backends("console") == []
    monkeypatch.setenv("REFINE_VERBOSE", "1")
    assert tracker_backends(["console", "file", "wandb"]) == ["console", "wandb"]
    assert os.environ["REFINE_VERBOSE"] == "1"
