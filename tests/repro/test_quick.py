"""`python scripts/repro/run.py --quick` end to end into tmp_path: every stage, the results file, report and plots;
then `--report-only` rewrites the same report from that results file."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_quick_study_end_to_end(tmp_path):
    from repro.sizes import QUICK, STUDY_VERSION

    work, report_dir = tmp_path / "work", tmp_path / "report"
    result = subprocess.run(
        [sys.executable, "scripts/repro/run.py", "--quick", "--work-dir", str(work), "--report-dir", str(report_dir)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=1500, check=False,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    printed = re.findall(r"repro: wrote (\S+)", result.stdout)
    expected = [report_dir / "results.json", report_dir / "results.md"] + [
        report_dir / "results" / f"{phase}_paired.png" for phase in ("mid", "post", "ttt")]
    assert sorted(printed) == sorted(map(str, expected))
    for path in expected[2:]:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000, path

    results = json.loads((report_dir / "results.json").read_text())
    assert results["study_version"] == STUDY_VERSION and results["quick"] is True
    seed = QUICK.seeds[0]
    mid = ("ntp", "refine", *QUICK.controls, *QUICK.ablations)
    wanted = {"random_init", "pretrained", *(f"mid/{a}_s{seed}" for a in mid),
              *(f"post/{a}_s{seed}" for a in ("ctl", "refine")), *(f"ttt/{a}_s{seed}" for a in ("ttt_ntp", "ttt_refine"))}
    assert set(results["models"]) == wanted
    bins = {f"{lo}-{hi}" for lo, hi in QUICK.bins}
    for name, value in results["models"].items():
        if not name.startswith("ttt/"):
            assert set(value["em"]) == bins, name
            assert all(len(b) == QUICK.items_per_bin and set(b) <= {"0", "1"} for b in value["em"].values()), name
    for name in ("random_init", "pretrained", f"mid/ntp_s{seed}", f"mid/refine_s{seed}"):
        m = results["models"][name]["measures"]
        assert -1 <= m[f"nsp_cos_chance@{QUICK.nsp_len}"] <= 1 and -1 <= m["hidden_cos"] <= 1, name
    # the random-init model's NTP loss is near ln(vocab 512) = 6.24: the measure is computed on real logits
    assert abs(results["models"]["random_init"]["measures"][f"ntp_loss@{QUICK.ntp_lengths[0]}"] - math.log(512)) < 0.3

    # updates matched, read from the runs' own metrics: one inner-loop optimiser step per global step in every
    # arm (the ReFINE arm's combined NTP + NSP-GRPO step included), plus one task-SFT step in post-training
    runs = results["runs"]
    for arm in mid:
        r = runs[f"mid/{arm}_s{seed}"]
        steps = QUICK.control_steps if arm == "ntp_2x" else QUICK.mid_steps
        assert (r["global_steps"], r["inner_updates"], r["task_updates"]) == (steps, steps, 0), (arm, r)
        assert (r["rollout_tokens"] > 0) == arm.startswith("refine"), (arm, r)
    for arm in ("ctl", "refine"):
        r = runs[f"post/{arm}_s{seed}"]
        assert (r["inner_updates"], r["task_updates"]) == (QUICK.post_steps, QUICK.post_steps), (arm, r)
    for arm in ("ttt_ntp", "ttt_refine"):
        r = runs[f"ttt/{arm}_s{seed}"]
        assert r["inner_updates"] == QUICK.ttt_items // QUICK.ttt_batch and r["task_updates"] == 0, (arm, r)
    # the ReFINE runs logged the cosine reward with its chance level; the NTP-only ones no reward
    assert runs[f"mid/refine_s{seed}"]["curves"]["reward/cs_reward_chance_mean"]
    assert "reward/cs_reward_mean" not in runs[f"mid/ntp_s{seed}"]["curves"]

    report = (report_dir / "results.md").read_text()
    assert "--quick" in report and "## Pre-registered hypotheses" in report

    # --report-only rewrites the identical report from the results file alone (the work dir is not read)
    (report_dir / "results.md").unlink()
    again = subprocess.run([sys.executable, "scripts/repro/run.py", "--report-only", "--report-dir", str(report_dir)],
                           cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (report_dir / "results.md").read_text() == report
