"""Soak run: many steps of the embedded default with frequent checkpoints, watching memory and step time.

    .venv/bin/python scripts/bench/soak.py [--steps 200] [--save-freq 10] [--nsp-mode faithful|fast]

Runs `python -m refine.main` (the embedded default) in a subprocess, samples the resident memory of the whole
process tree (driver, Ray, workers) twice a second, and attributes each sample to the step being run (from the
run's metrics.jsonl). Prints a table every `--save-freq` steps (step, seconds per step, peak RSS) and the two
verdicts: RSS growth after warm-up (target <= 5 %) and step-time drift (last vs first window after warm-up).
Exits non-zero when the run fails.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def steps_done(metrics_file: Path) -> list[dict]:
    if not metrics_file.exists():
        return []
    records = []
    for line in metrics_file.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line being written
            continue
        if "training/global_step" in record["data"]:
            records.append(record)
    return records


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--save-freq", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=20, help="steps excluded from the verdicts")
    parser.add_argument("--nsp-mode", default="faithful", choices=["faithful", "fast"])
    args = parser.parse_args(argv)
    run_dir = Path(tempfile.mkdtemp(prefix="refine_soak_"))
    command = [sys.executable, "-m", "refine.main", "+preset=embedded_demo", f"trainer.total_training_steps={args.steps}",
               f"trainer.save_freq={args.save_freq}", "trainer.test_freq=-1", "trainer.val_before_train=false",
               "trainer.total_epochs=1000",  # the demo corpus is one epoch of ~80 steps: loop over it
               "trainer.max_actor_ckpt_to_keep=2", f"refine.nsp_mode={args.nsp_mode}",
               f"trainer.default_local_dir={run_dir}"]
    print("running:", " ".join(command[1:]), flush=True)
    log = open(run_dir / "soak.log", "w")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    watcher = psutil.Process(proc.pid)
    peak_by_step: dict[int, int] = {}
    start = time.time()
    while proc.poll() is None:
        current = len(steps_done(run_dir / "metrics.jsonl")) + 1
        peak_by_step[current] = max(peak_by_step.get(current, 0), tree_rss(watcher))
        time.sleep(0.5)
    if proc.returncode != 0:
        print(f"the run failed (exit {proc.returncode}); log: {run_dir / 'soak.log'}")
        return 1
    records = {r["step"]: r["data"] for r in steps_done(run_dir / "metrics.jsonl")}
    seconds = {s: d.get("timing_s/step", float("nan")) for s, d in records.items()}
    print(f"\n{'step':>6} {'s/step':>8} {'peak RSS MiB':>13}")
    for step in range(args.save_freq, args.steps + 1, args.save_freq):
        window = [s for s in range(step - args.save_freq + 1, step + 1) if s in peak_by_step and s in seconds]
        if not window:
            continue
        peak = max((peak_by_step[s] for s in window), default=0) / 2**20
        mean = sum(seconds.get(s, 0.0) for s in window) / max(1, len(window))
        print(f"{step:6d} {mean:8.3f} {peak:13.1f}")
    after = sorted(s for s in peak_by_step if args.warmup < s <= args.steps)
    if len(after) < 2 * args.save_freq:
        print("too few steps after warm-up for a verdict")
        return 0
    head, tail = after[: args.save_freq], after[-args.save_freq:]
    rss_head = max(peak_by_step[s] for s in head)
    rss_tail = max(peak_by_step[s] for s in tail)
    growth = 100 * (rss_tail - rss_head) / rss_head
    t_head = sum(seconds[s] for s in head if s in seconds) / len(head)
    t_tail = sum(seconds[s] for s in tail if s in seconds) / len(tail)
    print(f"\nRSS growth after warm-up (steps {head[0]}-{head[-1]} -> {tail[0]}-{tail[-1]}): {growth:+.1f} % "
          f"(target <= 5 %)")
    print(f"step time drift: {t_head:.3f} -> {t_tail:.3f} s ({100 * (t_tail / t_head - 1):+.1f} %)")
    print(f"wall {time.time() - start:.0f} s; run folder {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
