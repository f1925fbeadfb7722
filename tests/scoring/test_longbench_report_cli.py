"""scripts/longbench_report.py on a small predictions file and on a copy of two shipped LongBench files."""

import importlib.util
import json
import shutil

import pandas as pd
import pytest

from refine.scoring.paths import LONGBENCH_DIR, REPO_ROOT


def _load_script():
    spec = importlib.util.spec_from_file_location("longbench_report", REPO_ROOT / "scripts/longbench_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_predictions_file(tmp_path, capsys):
    rows = [
        {"task": "hotpotqa", "prediction": "Paris France", "answers": ["Paris"]},  # 2/3
        {"task": "hotpotqa", "prediction": "\nParis", "answers": ["Paris"]},  # refine: 0, longbench: 1
        {"data_source": "ruler_squadqa", "prediction": "paris", "answer": ["Paris"]},  # other spellings
    ]
    path = tmp_path / "preds.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    script = _load_script()
    report = script.main(["--predictions", str(path), "--out", str(tmp_path / "r.json")])
    assert report["tasks"]["hotpotqa"] == {"n": 2, "score": round(100 * (2 / 3) / 2, 2)}
    assert report["tasks"]["ruler_squadqa"] == {"n": 1, "score": 100.0}
    assert json.loads((tmp_path / "r.json").read_text()) == report
    upstream = script.main(["--predictions", str(path), "--mode", "longbench"])
    assert upstream["tasks"]["hotpotqa"]["score"] == round(100 * (2 / 3 + 1) / 2, 2)
    assert "LongBench avg" in capsys.readouterr().out
    batched = script.main(["--predictions", str(path), "--val-batch-size", "2"])  # drop_last per task
    assert batched["tasks"]["hotpotqa"]["n"] == 2 and "ruler_squadqa" not in batched["tasks"]


def test_gold_as_prediction_with_round_trip_and_drop_last(tmp_path):
    for task in ("lcc", "trec"):
        shutil.copy(LONGBENCH_DIR / f"{task}_16384.parquet", tmp_path)
    script = _load_script()
    plain = script.main(["--gold-as-prediction", "--data-dir", str(tmp_path)])
    assert plain["tasks"] == {"lcc": {"n": 488, "score": 100.0}, "trec": {"n": 200, "score": 100.0}}
    trip = script.main(["--gold-as-prediction", "--data-dir", str(tmp_path), "--round-trip", "--val-batch-size", "64"])
    assert trip["tasks"]["lcc"]["n"] == 448 and trip["tasks"]["trec"]["n"] == 192
    # the "|" rows among the first 448 lcc rows lose points; nothing else changes
    lcc = pd.read_parquet(tmp_path / "lcc_16384.parquet").head(448)
    assert any("|" in a[0] for a in lcc.answers)
    assert trip["tasks"]["lcc"]["score"] < 100.0 and trip["tasks"]["trec"]["score"] == 100.0


def test_bad_predictions_file(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"task": "hotpotqa", "text": "x"}) + "\n")
    with pytest.raises(ValueError, match="prediction"):
        _load_script().main(["--predictions", str(path)])
    path.write_text(json.dumps({"task": "hotpotqa", "prediction": "x", "answers": "x"}) + "\n")
    with pytest.raises(ValueError, match="answers"):
        _load_script().main(["--predictions", str(path)])
