"""The SLURM launchers (scripts/slurm/*.sbatch), run as plain bash on a stand-in "allocation".

The virtual environment's python is a stand-in that records each `-m refine.main` command line (and the Ray
address and authentication it gets), so nothing trains: the test checks what each launcher would run (the demo
script's official command, with the GPUs and nodes of the job) and that the test-time launcher makes one run per
LongBench task, going on past a failing one. Multi-node jobs run against stand-ins of `srun`, `hostname`, the `ray`
command and the `ray` module (STUB_RAY below, first on PYTHONPATH), with a listening socket as the head's port.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
# The stand-in python: records `-m refine.main` calls (fails for a val file matching FAIL_MATCH, after recording;
# writes PREDICTION_SCORES as the run's predictions); any other script runs with the test's interpreter.
RECORD = """#!/bin/sh
if [ "$1" = "-m" ]; then
    { for arg in "$@"; do printf '%s\\0' "$arg"; done; printf '\\n'; } >> "$ARGS_OUT"
    printf '%s %s:%s\\n' "${RAY_ADDRESS:-}" "${RAY_AUTH_MODE:-}" "${RAY_AUTH_TOKEN:-}" >> "$ARGS_OUT.ray_env"
    for arg in "$@"; do
        case "$arg" in
            trainer.default_local_dir=*) run_dir=${arg#*=} ;;
            data.val_files=*) val_files=${arg#*=} ;;
        esac
    done
    if [ -n "${FAIL_MATCH:-}" ]; then
        case "$val_files" in *"$FAIL_MATCH"*) echo "stand-in: failing on $val_files" >&2; exit 7 ;; esac
    fi
    if [ -n "${SIGNAL_MATCH:-}" ]; then  # this run waits for a signal, as a trainer stopping after its step would
        case "$val_files" in *"$SIGNAL_MATCH"*)
            trap 'echo USR1 >> "$ARGS_OUT.signals"; exit 75' USR1
            trap 'echo TERM >> "$ARGS_OUT.signals"; exit 75' TERM
            echo "$$" > "$ARGS_OUT.waiting"
            i=0; while [ $i -lt 1200 ]; do sleep 0.05; i=$((i + 1)); done; exit 1 ;;  # never left behind
        esac
    fi
    if [ -n "${PREDICTION_SCORES:-}" ]; then
        mkdir -p "$run_dir/predictions"
        for score in $PREDICTION_SCORES; do
            printf '{"score": %s}\\n' "$score"
        done > "$run_dir/predictions/step_0.jsonl"
    fi
else
    exec PYTHON_FOR_SCRIPTS "$@"
fi
""".replace("PYTHON_FOR_SCRIPTS", sys.executable)
# Multi-node stand-ins: srun logs and runs its command here; `ray start` only logs; hostname prints STUB_* words.
SRUN = """#!/bin/sh
echo "$*" >> "$SRUN_LOG"
while [ $# -gt 0 ]; do case "$1" in -w) shift 2 ;; -*) shift ;; *) break ;; esac; done
exec "$@"
"""
RAY_CLI = '#!/bin/sh\necho "ray $*" >> "$SRUN_LOG"\necho "${RAY_AUTH_MODE:-}:${RAY_AUTH_TOKEN:-}" >> "$SRUN_LOG.auth"\n'
SCONTROL = '#!/bin/sh\necho "$*" >> "$SRUN_LOG.scontrol"\n'
HOSTNAME = """#!/bin/sh
case "$1" in --ip-address) echo "$STUB_IP_ADDRESS" ;; -I) echo "$STUB_IP_ALL" ;; *) echo stub-host ;; esac
"""
# ray.nodes() as Ray reports them: alive nodes named by their host name (domain included), one dead node.
STUB_RAY = """import os
failures = int(os.environ.get("STUB_RAY_INIT_FAILURES", "0"))
def init(address=None, **kwargs):  # the first STUB_RAY_INIT_FAILURES calls fail as Ray does when it cannot connect
    global failures
    if failures > 0:
        failures -= 1
        raise ConnectionError(f"Failed to connect to Ray cluster at {address}\\nmore detail")
def nodes():
    alive = [{"Alive": True, "NodeName": "10.9.9.9", "NodeManagerHostname": name + ".cluster"}
             for name in os.environ.get("STUB_RAY_ALIVE", "").split()]
    return alive + [{"Alive": False, "NodeName": name} for name in os.environ.get("STUB_RAY_DEAD", "").split()]
def shutdown():
    pass
"""
SLURM_FREE_ENV = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RAY_"))
                  and k not in ("GPUS_PER_NODE", "CPUS_PER_NODE", "HEAD_IP", "DRY_RUN", "TASKS", "PYTHON", "CKPT_DIR",
                                "CKPT_ROOT", "RUN_PREFIX", "LONGBENCH_DIR", "PROJECT_NAME", "EXPERIMENT_NAME")}


def executable(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


def launch(tmp_path: Path, name: str, *args: str, expect_rc: int = 0, send=None, **env):
    """Run scripts/slurm/<name>.sbatch (sending it the signal `send` once a run waits for one); returns (the
    finished process, one {key: value} dict of overrides per recorded refine.main call)."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    executable(venv / "bin" / "python", RECORD)
    for stub, text in (("srun", SRUN), ("ray", RAY_CLI), ("hostname", HOSTNAME)):
        executable(venv / "bin" / stub, text)
    (tmp_path / "stub_modules" / "ray").mkdir(parents=True)
    (tmp_path / "stub_modules" / "ray" / "__init__.py").write_text(STUB_RAY)
    args_out = tmp_path / "calls"
    full_env = {**SLURM_FREE_ENV, "REPO": str(REPO_ROOT), "VENV": str(venv), "ARGS_OUT": str(args_out),
                "SRUN_LOG": str(tmp_path / "srun.log"), "PYTHONPATH": str(tmp_path / "stub_modules"),
                "SLURM_JOB_NUM_NODES": "1", "SLURM_GPUS_ON_NODE": "8", "SLURM_CPUS_PER_TASK": "8",
                "MODEL_PATH": "/models/m", "TRAIN_FILES": "/data/train.parquet", "VAL_FILES": "/data/val.parquet",
                **env}
    if "SLURM_JOB_ID" in env:  # a job that may requeue itself: an `scontrol` that records (only then: allocation.sh
        executable(tmp_path / "slurm_bin" / "scontrol", SCONTROL)  # expands node lists with a real one)
        full_env["PATH"] = f"{tmp_path / 'slurm_bin'}:{full_env['PATH']}"
    command = ["bash", str(REPO_ROOT / "scripts" / "slurm" / f"{name}.sbatch"), *args]
    if send is None:
        done = subprocess.run(command, env=full_env, capture_output=True, text=True, check=False, timeout=120)
    else:  # SLURM's signal to the batch shell once the trainer stand-in waits for it
        proc = subprocess.Popen(command, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        waiting = Path(f"{args_out}.waiting")
        deadline = time.time() + 60
        while not waiting.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert waiting.exists(), "the trainer stand-in never started"
        proc.send_signal(send)
        out, err = proc.communicate(timeout=60)
        done = subprocess.CompletedProcess(command, proc.returncode, out, err)
    assert done.returncode == expect_rc, done.stdout[-2000:] + done.stderr[-2000:]
    calls = []
    for line in (args_out.read_text().splitlines() if args_out.exists() else []):
        argv = line.split("\0")[:-1]
        assert argv[:2] == ["-m", "refine.main"]
        calls.append(dict(a.lstrip("+").split("=", 1) for a in argv[2:]))
    return done, calls


@pytest.mark.parametrize("name,gpus", [("midtrain", "8"), ("posttrain", "8")])
def test_training_launchers_run_the_demo_with_the_job_resources(tmp_path, name, gpus):
    _, (call,) = launch(tmp_path, name, CKPT_DIR=str(tmp_path / "ckpt"))
    assert call["trainer.n_gpus_per_node"] == gpus and call["trainer.nnodes"] == "1"
    assert call["actor_rollout_ref.model.path"] == "/models/m" and call["data.train_files"] == "/data/train.parquet"
    assert call["trainer.default_local_dir"] == str(tmp_path / "ckpt")


def test_testtime_launcher_runs_once_per_task(tmp_path):
    _, calls = launch(tmp_path, "testtimetrain", TASKS="hotpotqa trec", GPUS_PER_NODE="2")
    assert [c["data.val_files"] for c in calls] == [
        str(REPO_ROOT / "data/longbench/hotpotqa_16384.parquet"), str(REPO_ROOT / "data/longbench/trec_16384.parquet")]
    names = [c["trainer.experiment_name"] for c in calls]
    assert names == ["testtimetrain_16k_tttrl_hotpotqa", "testtimetrain_16k_tttrl_trec"]
    assert all(c["trainer.n_gpus_per_node"] == "2" and c["trainer.val_only"] == "True" for c in calls)
    # Extra arguments reach every run (here the per-batch reset variant), after the official ones.
    _, calls = launch(tmp_path / "reset", "testtimetrain", "refine.ttt_reset=batch", TASKS="hotpotqa trec")
    assert [c.get("refine.ttt_reset") for c in calls] == ["batch", "batch"]


def test_testtime_launcher_covers_every_shipped_longbench_file(tmp_path):
    _, calls = launch(tmp_path, "testtimetrain")
    shipped = sorted(str(p) for p in (REPO_ROOT / "data" / "longbench").glob("*_16384.parquet"))
    assert len(shipped) == 14 and sorted(c["data.val_files"] for c in calls) == shipped


def table_rows(stdout: str) -> dict[str, list[str]]:
    """The TTT summary table: {task: [status..., n, score, predictions]} (status may hold spaces)."""
    lines = stdout[stdout.index("LongBench test-time training:"):].splitlines()
    return {line.split()[0]: line.split()[1:] for line in lines[2:]}


def test_testtime_launcher_goes_on_past_a_failing_task_and_reports_it(tmp_path):
    done, calls = launch(tmp_path, "testtimetrain", TASKS="hotpotqa trec qasper", FAIL_MATCH="trec_16384",
                         PREDICTION_SCORES="1 0 0.5", CKPT_ROOT=str(tmp_path / "runs"), expect_rc=1)
    assert [c["trainer.experiment_name"] for c in calls] == [
        "testtimetrain_16k_tttrl_hotpotqa", "testtimetrain_16k_tttrl_trec", "testtimetrain_16k_tttrl_qasper"]
    rows = table_rows(done.stdout)
    runs = tmp_path / "runs"
    # scores 1, 0, 0.5 -> mean 0.5 -> 50.00 (x100, as the LongBench report); the failed task has none
    for task in ("hotpotqa", "qasper"):
        predictions = runs / f"testtimetrain_16k_tttrl_{task}" / "predictions" / "step_0.jsonl"
        assert rows[task] == ["ok", "3", "50.00", str(predictions)]
    assert rows["trec"] == ["FAILED", "(exit", "7)", "-", "-", "-"]
    assert rows["LongBench"] == ["avg", "2", "50.00"]
    assert "2 of 3 task(s) ok, 1 failed" in done.stdout
    assert done.stderr.strip().splitlines()[-1] == "testtimetrain.sbatch: 1 of 3 task(s) failed: trec"


def test_ttt_summary_reads_only_predictions_written_since_the_job_started(tmp_path):
    since = time.time() - 60
    fresh, stale, failed = (tmp_path / name for name in ("fresh", "stale", "failed"))
    for run_dir, scores in ((fresh, [0.25, 0.75, 1.0, 0.0]), (stale, [1.0]), (failed, [1.0])):
        (run_dir / "predictions").mkdir(parents=True)
        (run_dir / "predictions" / "step_0.jsonl").write_text("".join(f'{{"score": {s}}}\n' for s in scores))
    os.utime(stale / "predictions" / "step_0.jsonl", (since - 3600, since - 3600))
    done = subprocess.run([sys.executable, str(REPO_ROOT / "scripts/slurm/ttt_summary.py"), "--since", str(since),
                           "hotpotqa", "0", str(fresh), "trec", "0", str(stale), "qasper", "3", str(failed)],
                          capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    rows = table_rows(done.stdout)
    assert rows["hotpotqa"][:3] == ["ok", "4", "50.00"]  # (0.25 + 0.75 + 1 + 0) / 4 = 0.5
    assert rows["trec"] == ["ok,", "no", "predictions", "-", "-", "-"]
    assert rows["qasper"] == ["FAILED", "(exit", "3)", "-", "-", "-"]
    assert "LongBench" not in rows  # one scored task: no average


def listening_port() -> socket.socket:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    return server


FOUR_NODES = {"SLURM_JOB_NUM_NODES": "4", "SLURM_JOB_NODELIST": "node[01-03],gpu7", "SLURM_GPUS_ON_NODE": "4",
              "SLURM_CPUS_PER_TASK": "16", "RAY_JOIN_POLL": "0.1", "RAY_JOIN_TIMEOUT": "1"}


def test_multi_node_job_starts_ray_on_every_node_and_trains_once_all_joined(tmp_path):
    with listening_port() as head:
        port = head.getsockname()[1]
        done, calls = launch(tmp_path, "midtrain", HEAD_IP="127.0.0.1", RAY_PORT=str(port),
                             STUB_RAY_ALIVE="node01 node02 node03 gpu7", CKPT_DIR=str(tmp_path / "ckpt"), **FOUR_NODES)
    (call,) = calls
    assert call["trainer.nnodes"] == "4" and call["trainer.n_gpus_per_node"] == "4"
    address, auth = (tmp_path / "calls.ray_env").read_text().split()
    assert address == f"127.0.0.1:{port}"
    # one token-mode secret of 256 bits for the job, the same for every `ray start` and the trainer
    assert re.fullmatch("token:[0-9a-f]{64}", auth)
    assert (tmp_path / "srun.log.auth").read_text().split() == [auth] * 4
    started = sorted(line for line in (tmp_path / "srun.log").read_text().splitlines() if line.startswith("ray "))
    resources = "--num-gpus=4 --num-cpus=16 --block"
    assert started == sorted(
        [f"ray start --head --node-ip-address=127.0.0.1 --port={port} --node-name=node01 {resources}"]
        + [f"ray start --address=127.0.0.1:{port} --node-name={n} {resources}" for n in ("node02", "node03", "gpu7")])
    assert "ray: 4 of 4 node(s) joined: node01 node02 node03 gpu7" in done.stdout


def test_multi_node_job_stops_naming_the_nodes_that_did_not_join(tmp_path):
    start = time.monotonic()
    with listening_port() as head:
        done, calls = launch(tmp_path, "midtrain", HEAD_IP="127.0.0.1", RAY_PORT=str(head.getsockname()[1]),
                             STUB_RAY_ALIVE="node01 node02", STUB_RAY_DEAD="gpu7",
                             expect_rc=1, **FOUR_NODES)
    assert calls == []  # no training on part of the job
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("ray_join:")]
    assert "2 of 4 node(s) not in the Ray cluster" in line and ": node03 gpu7; joined: node01 node02." in line
    assert "RAY_JOIN_TIMEOUT" in line and time.monotonic() - start < 20


@pytest.mark.parametrize("init_failures,expect_rc", [(3, 0), (10**6, 1)])
def test_join_wait_retries_connecting_until_its_deadline(tmp_path, init_failures, expect_rc):
    """The head's port opens before Ray answers: a refused connection is retried until RAY_JOIN_TIMEOUT, then one
    line."""
    with listening_port() as head:
        port = head.getsockname()[1]
        done, calls = launch(tmp_path, "midtrain", HEAD_IP="127.0.0.1", RAY_PORT=str(port),
                             STUB_RAY_ALIVE="node01 node02 node03 gpu7", STUB_RAY_INIT_FAILURES=str(init_failures),
                             expect_rc=expect_rc, **FOUR_NODES)
    assert len(calls) == 1 - expect_rc
    if expect_rc:
        (line,) = [line for line in done.stderr.splitlines() if line.startswith("ray_join:")]
        assert line.startswith(f"ray_join: cannot connect to the Ray cluster at 127.0.0.1:{port} within 1 s: "
                               f"ConnectionError: Failed to connect to Ray cluster at 127.0.0.1:{port}. Fix:")
        assert "RAY_AUTH_MODE / RAY_AUTH_TOKEN" in line


@pytest.mark.parametrize("ip_address,ip_all,head_ip", [
    ("fe80::1%ib0 2001:db8::7 10.1.2.3", "10.9.9.9", "10.1.2.3"),  # IPv6 first: the first IPv4
    ("127.0.1.1 fe80::1", "10.4.5.6 172.17.0.1", "10.4.5.6"),       # no usable IPv4 there: hostname -I
])
def test_head_address_is_the_head_nodes_first_ipv4(tmp_path, ip_address, ip_all, head_ip):
    """Nothing listens on the address found, so the wait for the head ends after RAY_JOIN_TIMEOUT, naming it."""
    done, calls = launch(tmp_path, "midtrain", STUB_IP_ADDRESS=ip_address, STUB_IP_ALL=ip_all,
                         expect_rc=1, **FOUR_NODES)
    assert f"ray start --head --node-ip-address={head_ip} --port=6379" in (tmp_path / "srun.log").read_text()
    assert f"ray head node01 ({head_ip}:6379)" in done.stdout and calls == []
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("ray_join:")]
    assert f"1 of 1 node(s) not in the Ray cluster at {head_ip}:6379" in line and ": node01; joined: none" in line


def test_no_ipv4_for_the_head_stops_with_one_line(tmp_path):
    done, _ = launch(tmp_path, "midtrain", STUB_IP_ADDRESS="fe80::1", STUB_IP_ALL="127.0.0.1", expect_rc=2,
                     **FOUR_NODES)
    assert done.stderr.strip().splitlines() == [
        ("midtrain.sbatch: no IPv4 address for the head node node01 (hostname --ip-address, hostname -I there: "
         "'fe80::1 127.0.0.1'). Fix: set HEAD_IP=<its IPv4 address>")]


@pytest.mark.parametrize("name,sig", [("midtrain", signal.SIGUSR1), ("posttrain", signal.SIGTERM)])
def test_a_signal_to_the_job_reaches_the_trainer_and_the_stopped_job_requeues_itself(tmp_path, name, sig):
    """SLURM signals the batch shell only (--signal=B:USR1@...): the launcher forwards it to the trainer, which
    stops with status 75; the job then runs `scontrol requeue <job id>` and exits 75. The requeued job runs the
    same command (same run folder), so it resumes; REQUEUE=0 leaves the job as it is."""
    ckpt = str(tmp_path / "ckpt")
    done, (call,) = launch(tmp_path, name, expect_rc=75, send=sig, SIGNAL_MATCH="val.parquet", SLURM_JOB_ID="4242",
                           CKPT_DIR=ckpt)
    assert (tmp_path / "calls.signals").read_text().split() == [sig.name.removeprefix("SIG")]
    assert (tmp_path / "srun.log.scontrol").read_text().split() == ["requeue", "4242"]
    assert call["trainer.default_local_dir"] == ckpt and f"requeueing job 4242" in done.stderr
    done, _ = launch(tmp_path / "no", name, expect_rc=75, send=sig, SIGNAL_MATCH="val.parquet", SLURM_JOB_ID="7",
                     REQUEUE="0", CKPT_DIR=ckpt)
    assert not (tmp_path / "no" / "srun.log.scontrol").exists() and "not requeued (REQUEUE=0" in done.stderr


def test_a_finished_run_is_not_requeued(tmp_path):
    launch(tmp_path, "midtrain", SLURM_JOB_ID="4242", CKPT_DIR=str(tmp_path / "ckpt"))
    assert not (tmp_path / "srun.log.scontrol").exists()


def test_testtime_launcher_stops_on_a_signal_with_its_table_so_far(tmp_path):
    """The signal arrives during the second of three tasks: that task stops (status 75), the third never starts,
    the table shows the first scored, the second stopped, the third not run; the job exits 75, is not requeued
    (nothing saved) and names the TASKS still to run."""
    done, calls = launch(tmp_path, "testtimetrain", expect_rc=75, send=signal.SIGUSR1, TASKS="hotpotqa trec qasper",
                         SIGNAL_MATCH="trec_16384", PREDICTION_SCORES="1 0", CKPT_ROOT=str(tmp_path / "runs"),
                         SLURM_JOB_ID="4242")
    assert [c["trainer.experiment_name"] for c in calls] == ["testtimetrain_16k_tttrl_hotpotqa",
                                                             "testtimetrain_16k_tttrl_trec"]
    rows = table_rows(done.stdout)
    assert rows["hotpotqa"][:3] == ["ok", "2", "50.00"]
    assert rows["trec"] == ["STOPPED", "(signal)", "-", "-", "-"]
    assert rows["qasper"] == ["not", "run", "(stopped)", "-", "-", "-"]
    assert "1 of 3 task(s) ok, 0 failed" in done.stdout
    assert done.stderr.strip().splitlines()[-1] == ("testtimetrain.sbatch: stopped on a signal during trec; to "
                                                    "finish, submit again with TASKS='trec qasper'")
    assert not (tmp_path / "srun.log.scontrol").exists()


def test_the_launchers_bash_is_well_formed_and_agrees_on_the_exit_status():
    """`bash -n` over every launcher, sourced helper and demo script; the status the launchers requeue on is the
    trainer's."""
    from refine.driver.preemption import PREEMPTED_EXIT_STATUS

    scripts = sorted([*(REPO_ROOT / "scripts" / "slurm").glob("*.sh"), *(REPO_ROOT / "scripts" / "slurm").glob(
        "*.sbatch"), *(REPO_ROOT / "verl" / "examples" / "refine_trainer" / "demo").glob("*.sh")])
    assert len(scripts) >= 11
    for script in scripts:
        checked = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
        assert checked.returncode == 0, f"{script}: {checked.stderr}"
    text = (REPO_ROOT / "scripts" / "slurm" / "signals.sh").read_text()
    assert f"PREEMPTED_EXIT_STATUS={PREEMPTED_EXIT_STATUS} " in text
