"""The SLURM launchers' dry run (`--dry-run` / DRY_RUN=1) and their one-line refusals, without SLURM.

A dry run prints every command it would run as `[dry-run] <shell-quoted command>`; the expected commands below are
written out by hand from the allocation given. `srun` and `ray` on PATH are traps that record any call: a dry run
must call neither (nor python: the virtual environment does not exist).
"""

import os
import shlex
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SLURM_DIR = REPO_ROOT / "scripts" / "slurm"
INHERITED = ("REPO", "VENV", "DRY_RUN", "GPUS_PER_NODE", "CPUS_PER_NODE", "HEAD_IP", "MODEL_PATH", "TRAIN_FILES",
             "VAL_FILES", "CKPT_DIR", "CKPT_ROOT", "TASKS", "PYTHON")


def clean_env(tmp_path: Path, **env) -> dict[str, str]:
    """The test's environment without any SLURM_* or launcher variable, trap `srun`/`ray` first on PATH, plus env."""
    traps = tmp_path / "traps"
    traps.mkdir(exist_ok=True)
    for name in ("srun", "ray"):
        (traps / name).write_text(f'#!/bin/sh\necho "{name} $*" >> "{tmp_path}/trapped"\n')
        (traps / name).chmod(0o755)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RAY_")) and k not in INHERITED}
    return {**base, "PATH": f"{traps}:{base['PATH']}", "VENV": str(tmp_path / "no-venv"), **env}


def run(tmp_path: Path, name: str, *args: str, **env) -> subprocess.CompletedProcess:
    done = subprocess.run(["bash", str(SLURM_DIR / f"{name}.sbatch"), *args], env=clean_env(tmp_path, **env),
                          cwd=tmp_path, capture_output=True, text=True, check=False, timeout=60)
    assert not (tmp_path / "trapped").exists(), (tmp_path / "trapped").read_text()
    return done


def dry_run_commands(stdout: str) -> list[list[str]]:
    return [shlex.split(line[len("[dry-run] "):]) for line in stdout.splitlines() if line.startswith("[dry-run] ")]


def overrides(argv: list[str]) -> dict[str, str]:
    return dict(a.lstrip("+").split("=", 1) for a in argv)


PYTHON = "{venv}/bin/python"
JOBS = {  # nodes: (SLURM_JOB_NODELIST, its hosts written out by hand)
    1: ("gpu7", ["gpu7"]),
    2: ("node[01-02]", ["node01", "node02"]),
    4: ("node[09-10],gpu[7,12]", ["node09", "node10", "gpu7", "gpu12"]),
}
TRAINING = {"MODEL_PATH": "/models/m", "TRAIN_FILES": "/data/train.parquet", "VAL_FILES": "/data/val.parquet"}
TRAPS = [["trap", "kill -USR1 <trainer-pid>", "USR1"], ["trap", "kill -TERM <trainer-pid>", "TERM"]]


@pytest.mark.parametrize("gpu_variable,gpu_value", [("SLURM_GPUS_ON_NODE", "4"), ("SLURM_GPUS_PER_NODE", "h100:4")])
@pytest.mark.parametrize("nodes", [1, 2, 4])
def test_dry_run_prints_the_ray_and_trainer_commands_of_the_allocation(tmp_path, nodes, gpu_variable, gpu_value):
    nodelist, hosts = JOBS[nodes]
    done = run(tmp_path, "midtrain", "--dry-run", "trainer.total_epochs=2", SLURM_JOB_NUM_NODES=str(nodes),
               SLURM_JOB_NODELIST=nodelist, SLURM_CPUS_PER_TASK="16", HEAD_IP="10.0.0.1",
               **{gpu_variable: gpu_value}, **TRAINING)
    assert done.returncode == 0, done.stderr[-2000:]
    python = PYTHON.format(venv=tmp_path / "no-venv")
    srun = ["srun", "--nodes=1", "--ntasks=1", "-w"]
    resources = ["--num-gpus=4", "--num-cpus=16", "--block"]
    expected = []
    if nodes > 1:
        head, workers = hosts[0], hosts[1:]
        expected.append(["export", "RAY_AUTH_MODE=token", "RAY_AUTH_TOKEN=<random-64-hex-digits-per-job>"])
        expected.append(srun + [head, "ray", "start", "--head", "--node-ip-address=10.0.0.1", "--port=6379",
                                f"--node-name={head}", *resources])
        expected.append([python, "scripts/slurm/ray_join.py", "10.0.0.1:6379", "300", head])
        expected += [srun + [w, "ray", "start", "--address=10.0.0.1:6379", f"--node-name={w}", *resources]
                     for w in workers]
        expected.append([python, "scripts/slurm/ray_join.py", "10.0.0.1:6379", "300", *hosts])
        expected.append(["export", "RAY_ADDRESS=10.0.0.1:6379"])
    commands = dry_run_commands(done.stdout)
    # the trap that forwards SLURM's signal to the trainer, the trainer, the requeue (on exit status 75 only)
    assert commands[:-2] == expected + TRAPS
    trainer = commands[-2]
    assert commands[-1] == ["scontrol", "requeue", "<SLURM_JOB_ID>"]
    assert "(--signal=B:USR1@600;" in done.stdout and "the job requeues itself and resumes in" in done.stdout
    assert trainer[:3] == [python, "-m", "refine.main"]
    values = overrides(trainer[3:])
    assert values["trainer.nnodes"] == str(nodes) and values["trainer.n_gpus_per_node"] == "4"
    assert values["actor_rollout_ref.model.path"] == "/models/m" and values["trainer.total_epochs"] == "2"
    assert trainer[-1] == "trainer.total_epochs=2"  # the launcher's arguments, --dry-run removed, come last


def test_dry_run_outside_slurm_needs_no_submit_dir_and_looks_up_the_head_address(tmp_path):
    """The reported crash (SLURM_SUBMIT_DIR unbound): REPO now defaults to the script's repository. Without HEAD_IP the
    dry run shows the look-up on the head node and a placeholder address; DRY_RUN=1 works like --dry-run."""
    done = run(tmp_path, "posttrain", DRY_RUN="1", SLURM_JOB_NUM_NODES="2", SLURM_JOB_NODELIST="a1,b2",
               SLURM_GPUS_ON_NODE="8", SLURM_CPUS_ON_NODE="32", **TRAINING)
    assert done.returncode == 0, done.stderr[-2000:]
    commands = dry_run_commands(done.stdout)
    srun = ["srun", "--nodes=1", "--ntasks=1", "-w", "a1"]
    assert commands[:2] == [srun + ["hostname", "--ip-address"], srun + ["hostname", "-I"]]
    assert commands[2] == ["export", "RAY_AUTH_MODE=token", "RAY_AUTH_TOKEN=<random-64-hex-digits-per-job>"]
    assert commands[3][:9] == srun + ["ray", "start", "--head", "--node-ip-address=<first-IPv4-of-a1>"]
    assert commands[3][9:] == ["--port=6379", "--node-name=a1", "--num-gpus=8", "--num-cpus=32", "--block"]
    assert commands[-4:-2] == TRAPS and commands[-1] == ["scontrol", "requeue", "<SLURM_JOB_ID>"]
    values = overrides(commands[-2][3:])
    assert values["trainer.default_local_dir"] == str(REPO_ROOT / "checkpoints/ReFINE/posttrain_8k_tttrl")
    assert values["trainer.nnodes"] == "2" and values["trainer.n_gpus_per_node"] == "8"


def test_dry_run_of_the_testtime_launcher_prints_one_run_per_task_and_the_summary(tmp_path):
    done = run(tmp_path, "testtimetrain", "--dry-run", SLURM_JOB_NUM_NODES="1", SLURM_GPUS_ON_NODE="4",
               TASKS="hotpotqa trec", MODEL_PATH="/models/m", CKPT_ROOT="/ckpt")
    assert done.returncode == 0, done.stderr[-2000:]
    *runs, summary = dry_run_commands(done.stdout)
    assert runs[0:2] == TRAPS and runs[3:5] == TRAPS  # per task: the signal forwarded to it, then its command
    assert "scontrol" not in done.stdout  # test-time training is never requeued (nothing saved to resume)
    runs = runs[2::3]
    assert [overrides(r[3:])["data.val_files"] for r in runs] == [
        str(REPO_ROOT / "data/longbench/hotpotqa_16384.parquet"), str(REPO_ROOT / "data/longbench/trec_16384.parquet")]
    assert summary[1:4] == ["scripts/slurm/ttt_summary.py", "--since", summary[3]] and summary[3].isdigit()
    assert summary[4:] == ["hotpotqa", "0", "/ckpt/testtimetrain_16k_tttrl_hotpotqa",
                           "trec", "0", "/ckpt/testtimetrain_16k_tttrl_trec"]


ALLOCATED = {"SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "node[01-02]", "SLURM_GPUS_ON_NODE": "4",
             "SLURM_CPUS_PER_TASK": "16"}


@pytest.mark.parametrize("change,named", [
    ({"SLURM_JOB_NUM_NODES": None}, "SLURM_JOB_NUM_NODES is not set"),
    ({"SLURM_JOB_NUM_NODES": "two"}, "SLURM_JOB_NUM_NODES=two"),
    ({"SLURM_JOB_NODELIST": None}, "SLURM_JOB_NODELIST is not set"),
    ({"SLURM_JOB_NUM_NODES": "3"}, "SLURM_JOB_NODELIST=node[01-02] names 2 host(s) (node01 node02)"),
    ({"SLURM_JOB_NODELIST": "node[a-b]"}, "SLURM_JOB_NODELIST=node[a-b] cannot be expanded"),
    ({"SLURM_GPUS_ON_NODE": None}, "none of GPUS_PER_NODE, SLURM_GPUS_PER_NODE, SLURM_GPUS_ON_NODE is set"),
    ({"SLURM_GPUS_ON_NODE": "0"}, "SLURM_GPUS_ON_NODE=0: this job has no GPUs"),
    ({"SLURM_GPUS_PER_NODE": "h100:0"}, "SLURM_GPUS_PER_NODE=h100:0: this job has no GPUs"),
    ({"SLURM_GPUS_PER_NODE": "h100:x"}, "SLURM_GPUS_PER_NODE=h100:x: no GPU count"),
    ({"SLURM_CPUS_PER_TASK": None}, "none of CPUS_PER_NODE, SLURM_CPUS_PER_TASK, SLURM_CPUS_ON_NODE is set"),
    ({"HEAD_IP": "fe80::1"}, "HEAD_IP=fe80::1 is not an IPv4 address"),
    ({"RAY_JOIN_TIMEOUT": "soon"}, "RAY_JOIN_TIMEOUT=soon is not a number of seconds"),
    ({"REPO": "/nonexistent"}, "REPO=/nonexistent is not the repository root"),
])
def test_missing_or_bad_allocation_values_stop_with_one_line_naming_them(tmp_path, change, named):
    env = {**ALLOCATED, **TRAINING, **change}
    done = run(tmp_path, "midtrain", "--dry-run", **{k: v for k, v in env.items() if v is not None})
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("midtrain.sbatch: ") and named in lines[0] and "Fix:" in lines[0]


def bash_function(call: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f"source scripts/slurm/slurm_parse.sh; {call}"], cwd=REPO_ROOT,
                          input=stdin, capture_output=True, text=True, check=False, timeout=30)


@pytest.mark.parametrize("nodelist,hosts", [
    ("node[01-04],gpu7", "node01 node02 node03 node04 gpu7"),
    ("n[9-11]", "n9 n10 n11"),
    ("n[098-101]", "n098 n099 n100 n101"),
    ("n[1-2,5],solo", "n1 n2 n5 solo"),
    ("rack[1-2]-n[08-09]", "rack1-n08 rack1-n09 rack2-n08 rack2-n09"),
    ("solo", "solo"),
])
def test_nodelist_expansion_without_scontrol(nodelist, hosts):
    done = bash_function(f"expand_nodelist_bash '{nodelist}'")
    assert done.returncode == 0 and done.stdout.split() == hosts.split(), done


@pytest.mark.parametrize("nodelist", ["n[a-b]", "n[1-2", "n[1-2]x]"])
def test_nodelist_expansion_refuses_what_it_cannot_read(nodelist):
    assert bash_function(f"expand_nodelist_bash '{nodelist}'").returncode == 1


@pytest.mark.parametrize("words,address", [
    ("fe80::1%ib0 2001:db8::7 10.1.2.3 192.168.0.7", "10.1.2.3"),
    ("127.0.1.1\n10.0.0.2", "10.0.0.2"),
    ("::1 fe80::2", None),
    ("127.0.0.1", None),
])
def test_head_address_is_the_first_ipv4_not_loopback(words, address):
    done = bash_function("first_ipv4", stdin=words)
    assert (done.stdout.strip() or None, done.returncode) == (address, 0 if address else 1)


@pytest.mark.parametrize("spec,count", [("4", "4"), ("h100:4", "4"), ("gpu:h100:4", "4"), ("a100:2,v100:1", "3"),
                                        ("08", "8"), ("h100:x", None)])
def test_gpus_per_node_spec(spec, count):
    done = bash_function(f"gpus_per_node_from '{spec}'")
    assert (done.stdout.strip() or None, done.returncode) == (count, 0 if count else 1)
