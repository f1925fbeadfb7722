"""The committed study (docs/results.json -> docs/results.md): the report is regenerated from the results file and
its numbers compared with the committed report's; an edited number fails; bad input to run.py is one line."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCS = REPO_ROOT / "docs"


def regenerate(results_file: Path) -> str:
    from repro import report

    return report.render(report.load_results(results_file))[0]


@pytest.fixture(scope="module")
def committed() -> tuple[str, str]:
    return (DOCS / "results.md").read_text(), regenerate(DOCS / "results.json")


def test_committed_report_equals_the_one_regenerated_from_the_results_file(committed):
    from repro import report

    text, regenerated = committed
    assert report.compare(text, regenerated) == []
    assert text == regenerated


def test_an_edited_number_in_the_report_is_caught(committed, tmp_path):
    from repro import report

    text, regenerated = committed
    lines = text.splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith("| H1 |"))
    edited = lines[row].replace("[", "[1", 1)  # e.g. "[-2.1," -> "[1-2.1,": a different number
    assert edited != lines[row]
    (tmp_path / "results.md").write_text("\n".join(lines[:row] + [edited] + lines[row + 1:]))
    problems = report.compare((tmp_path / "results.md").read_text(), regenerated)
    assert len(problems) == 1 and problems[0].startswith(f"line {row + 1}:"), problems


def test_the_committed_report_states_what_the_issue_asks_for(committed):
    from repro.sizes import FULL, STUDY_VERSION

    text, _ = committed
    results = json.loads((DOCS / "results.json").read_text())
    assert results["study_version"] == STUDY_VERSION and results["quick"] is False
    assert results["command"] == "python scripts/repro/run.py" and f"`{results['command']}`" in text
    assert re.search(r"code at commit `[0-9a-f]{7,}`", text) and "wall time" in text
    assert len(FULL.seeds) >= 3 and FULL.items_per_bin * len(FULL.primary_bins) >= 192
    assert FULL.items_per_bin * len(FULL.bins) >= 256
    # the controls and ablations on every seed too (paired with the same seeds of their baseline)
    assert tuple(FULL.control_seeds) == tuple(FULL.seeds)
    for arm in (*FULL.controls, *FULL.ablations):
        assert {f"mid/{arm}_s{seed}" for seed in FULL.seeds} <= set(results["runs"]), arm
    for hid in ("H1", "H2", "H3", "C1", "C2", "A1", "A2"):
        assert re.search(rf"^\| {hid} \|.*\| (held|null|reversed) \|$", text, re.M), hid
    assert "## Updates and tokens per arm" in text
    # the matched arms: the same updates and document tokens per phase, read from the runs' own metrics
    runs = results["runs"]
    for seed in FULL.seeds:
        for phase, a, b in (("mid", "ntp", "refine"), ("post", "ctl", "refine"), ("ttt", "ttt_ntp", "ttt_refine")):
            ra, rb = runs[f"{phase}/{a}_s{seed}"], runs[f"{phase}/{b}_s{seed}"]
            for key in ("global_steps", "inner_updates", "task_updates", "ntp_tokens"):
                assert ra[key] == rb[key], (phase, seed, key, ra[key], rb[key])
            assert ra["inner_updates"] > 0 and ra["ntp_tokens"] > 0 and rb["rollout_tokens"] > 0 == ra["rollout_tokens"]
    for phase in ("mid", "post", "ttt"):
        assert f"(results/{phase}_paired.png)" in text
        assert (DOCS / "results" / f"{phase}_paired.png").stat().st_size > 5000
    assert DOCS.joinpath("results.json").stat().st_size < 1_000_000


def _run(*args, cwd=REPO_ROOT):
    return subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "repro" / "run.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300, check=False)


def test_report_only_rewrites_the_committed_report_identically(tmp_path):
    shutil.copy(DOCS / "results.json", tmp_path / "results.json")
    result = _run("--report-only", "--report-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "results.md").read_text() == (DOCS / "results.md").read_text()
    for phase in ("mid", "post", "ttt"):
        assert (tmp_path / "results" / f"{phase}_paired.png").exists()


def test_bad_input_is_one_line_and_a_non_zero_exit(tmp_path):
    unknown = _run("--report-only", "--no-such-option")
    assert unknown.returncode != 0 and unknown.stderr.strip().count("\n") == 0
    assert "--no-such-option" in unknown.stderr

    missing = _run("--report-only", "--report-dir", str(tmp_path))
    assert missing.returncode != 0 and missing.stderr.strip().count("\n") == 0
    assert str(tmp_path / "results.json") in missing.stderr

    other = json.loads((DOCS / "results.json").read_text()) | {"study_version": "issue-13"}
    (tmp_path / "results.json").write_text(json.dumps(other))
    wrong = _run("--report-only", "--report-dir", str(tmp_path))
    assert wrong.returncode != 0 and wrong.stderr.strip().count("\n") == 0
    assert "'issue-13'" in wrong.stderr and not (tmp_path / "results.md").exists()
