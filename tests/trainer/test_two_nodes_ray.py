"""A real two-node Ray cluster on one machine (tests/trainer/two_nodes_probe.py, in a process of its own): a CPU
mid-training with `trainer.nnodes=2 trainer.n_gpus_per_node=1` has one worker on each node (Ray's placement-group
table), logs the same metrics as world size 2 on one node, and when the second node's raylet is killed in step 3
the run ends with one line naming that node and the resume; with the node back, the resume finishes steps 3-4 as
the one-node run did. The launchers' join wait (scripts/slurm/ray_join.py) sees both nodes by name."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.trainer.test_e2e_ray import COMPARED_PREFIXES

pytestmark = pytest.mark.slow
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    out = tmp_path_factory.mktemp("two_nodes")
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("two_nodes_probe.py")), str(out / "r.json"),
                           str(out / "runs")], capture_output=True, text=True, timeout=900, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    result = json.loads((out / "r.json").read_text())
    result["run_dir"] = out / "runs" / "two"
    return result


def assert_same(got: dict, expected: dict, steps) -> None:
    for step in steps:
        for key, value in expected[str(step)].items():
            if key.startswith(COMPARED_PREFIXES) and "memory" not in key:
                assert got[str(step)][key] == pytest.approx(value, rel=1e-5, abs=1e-6), (step, key)


def test_the_workers_land_on_both_nodes_and_log_what_one_node_logs(probe):
    assert probe["join"][0] == 0 and "ray: 2 of 2 node(s) joined: refine-head refine-node2" in probe["join"][1]
    assert probe["one_node_placement"] == ["refine-head", "refine-head"]
    assert sorted(probe["two_node_placement"]) == ["refine-head", "refine-node2"]
    assert sorted(probe["resumed_placement"]) == ["refine-head", "refine-node2"]
    assert sorted(map(int, probe["before_loss"])) == [1, 2]
    assert_same(probe["before_loss"], probe["one_node"], (1, 2))


def test_losing_a_node_is_one_line_naming_it_and_the_resume_finishes_like_one_node(probe):
    message = probe["message"]
    assert probe["worker_died"], probe["loss_error"]
    assert "\n" not in message and "\x1b" not in message and "lost Ray node(s): refine-node2 (" in message
    assert f"the latest complete checkpoint is {probe['run_dir'] / 'global_step_2'}" in message
    assert "run the same command again with trainer.resume_mode=auto" in message
    assert sorted(map(int, probe["resumed"])) == [1, 2, 3, 4]
    assert_same(probe["resumed"], probe["one_node"], (3, 4))
