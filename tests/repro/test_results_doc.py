"""The committed study report (docs/results.md): its tables have the columns, arms, measures and run counts the
study produces (the values are not checked: they are what the command printed)."""

from __future__ import annotations

import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CELL = re.compile(r"^-?\d[\d.e+-]* ± \d[\d.e+-]* \(n=(\d+)\)$")
MID_STEMS = ("ntp_loss", "short_loss", "nsp_em", "nsp_cos", "recall", "niah_nll")


def table_after(text: str, heading: str) -> tuple[list[str], list[list[str]]]:
    """(header cells, body rows) of the first markdown table after `heading`."""
    lines = text.split(heading, 1)[1].splitlines()
    rows = [line for line in lines[next(i for i, l in enumerate(lines) if l.startswith("|")):]]
    rows = rows[:next((i for i, l in enumerate(rows) if not l.startswith("|")), len(rows))]
    split = lambda line: [c.strip() for c in line.strip().strip("|").split("|")]
    assert set(rows[1].replace("|", "")) == {"-"}, rows[1]
    return split(rows[0]), [split(r) for r in rows[2:]]


def runs_in(cell: str) -> int:
    match = CELL.match(cell)
    assert match, f"not a 'mean ± std (n=N)' cell: {cell!r}"
    return int(match.group(1))


def test_committed_report_tables_have_the_study_shape():
    from repro.report import MID_COLUMNS, POST_COLUMNS, TTT_COLUMNS
    from repro.sizes import FULL

    text = (REPO_ROOT / "docs" / "results.md").read_text()
    n_seeds = len(FULL.seeds)
    assert n_seeds >= 3
    assert "Command: `python scripts/repro/run.py`" in text  # the full study, not --quick
    assert "(--quick: toy sizes" not in text

    header, rows = table_after(text, "## Mid-training")
    assert tuple(header) == MID_COLUMNS
    measures = [r[0] for r in rows]
    for stem in MID_STEMS:
        lengths = [int(m.split("@")[1]) for m in measures if m.split("@")[0] == stem]
        assert lengths, f"no {stem} row"
    assert max(int(m.split("@")[1]) for m in measures if m.startswith("ntp_loss@")) > FULL.train_len
    for row in rows:
        assert runs_in(row[1]) == runs_in(row[2]) == 1  # random init, pretrained: one model each
        assert runs_in(row[3]) == runs_in(row[4]) == runs_in(row[5]) == n_seeds, row[0]
        assert re.fullmatch(rf"\d/{n_seeds}", row[6]), row

    header, rows = table_after(text, "## Post-training")
    assert tuple(header) == POST_COLUMNS
    assert [r[0] for r in rows] == ["qa_tok", "qa_nll"]
    for row in rows:
        assert runs_in(row[1]) == runs_in(row[2]) == 1
        assert runs_in(row[3]) == runs_in(row[4]) == runs_in(row[5]) == n_seeds, row[0]

    header, rows = table_after(text, "## Test-time training")
    assert tuple(header) == TTT_COLUMNS
    assert [r[0] for r in rows] == ["qa_tok", "qa_nll"]
    for row in rows:
        assert runs_in(row[1]) == runs_in(row[2]) == runs_in(row[3]) == n_seeds, row[0]

    # the sanity table (pre-trained vs random init) covers every measure of the other tables
    header, rows = table_after(text, "## Sanity")
    assert [r[0] for r in rows] == [r[0] for r in table_after(text, "## Mid-training")[1]] + ["qa_tok", "qa_nll"]
    assert {r[3] for r in rows} <= {"yes", "**no**"}

    for name in ("midtrain_vs_length", "midtrain_curves", "posttrain_curves"):
        assert f"(results/{name}.png)" in text
        assert (REPO_ROOT / "docs" / "results" / f"{name}.png").stat().st_size > 5000
