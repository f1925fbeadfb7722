"""scripts/eval_niah.py: generate files with a saved tokenizer, then evaluate a saved tiny Llama on them."""

import importlib.util
import json

import pandas as pd
import pytest

from refine.scoring import ruler
from refine.scoring.paths import REPO_ROOT


def _load_script():
    spec = importlib.util.spec_from_file_location("eval_niah", REPO_ROOT / "scripts/eval_niah.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("tiny_llama")
    config = LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def test_generate_then_evaluate(checkpoint, tmp_path, capsys):
    script = _load_script()
    paths = script.main(["generate", "--tokenizer", str(checkpoint), "--tasks", "niah_single_1", "niah_single_3",
                         "--num-samples", "2", "--max-seq-length", "320", "--tokens-to-generate", "4",
                         "--out-dir", str(tmp_path / "niah")])
    assert [p.name for p in paths] == ["niah_single_1_320_2_test.parquet", "niah_single_3_320_2_test.parquet"]
    report = script.main(["evaluate", "--model", str(checkpoint), "--data", *map(str, paths), "--device", "cpu",
                          "--batch-size", "2", "--out", str(tmp_path / "report.json"),
                          "--predictions-out", str(tmp_path / "predictions.jsonl")])
    assert json.loads((tmp_path / "report.json").read_text()) == report
    rows = pd.read_json(tmp_path / "predictions.jsonl", lines=True)
    assert len(rows) == 4
    for task in ("niah_single_1", "niah_single_3"):
        part = rows[rows.task == task]
        want = 100 * sum(ruler.score(p, a, mode="all") for p, a in zip(part.prediction, part.answer)) / len(part)
        assert report["tasks"][task] == {"n": 2, "score": round(want, 2)}
    assert "niah_single_1" in capsys.readouterr().out

    # interrupted after 3 rows: the rerun answers only the missing one and gives the same report
    lines = (tmp_path / "predictions.jsonl").read_text().splitlines()
    (tmp_path / "predictions.jsonl").write_text("\n".join(lines[:3]) + "\n")
    again = script.main(["evaluate", "--model", str(checkpoint), "--data", *map(str, paths), "--device", "cpu",
                         "--batch-size", "2", "--predictions-out", str(tmp_path / "predictions.jsonl")])
    assert "resuming: 3 of 4 rows already answered" in capsys.readouterr().out
    assert again["tasks"] == report["tasks"]
    assert len((tmp_path / "predictions.jsonl").read_text().splitlines()) == 4


def test_unknown_task_is_rejected():
    with pytest.raises(SystemExit):
        _load_script().main(["generate", "--tokenizer", "x", "--tasks", "niah_single_9", "--out-dir", "y"])


def test_a_max_seq_length_too_short_is_one_line_naming_the_minimum(tmp_path):
    """The printed minimum is the real one: generate_niah accepts it and refuses one token less."""
    import subprocess
    import sys

    from transformers import AutoTokenizer

    from refine.eval.niah import generate_niah

    args = ["--tokenizer", str(REPO_ROOT / "data/demo/model"), "--tasks", "niah_single_1", "niah_multikey_2",
            "--num-samples", "2", "--tokens-to-generate", "16"]
    done = subprocess.run([sys.executable, str(REPO_ROOT / "scripts/eval_niah.py"), "generate", *args,
                           "--max-seq-length", "64", "--out-dir", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and not (tmp_path / "out").exists()
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--max-seq-length 64 is too short" in lines[0], done.stderr
    minimum = int(lines[0].split("Fix: use --max-seq-length ")[1].split()[0])
    tokenizer = AutoTokenizer.from_pretrained(REPO_ROOT / "data/demo/model")
    common = dict(tasks=["niah_single_1", "niah_multikey_2"], num_samples=2, tokens_to_generate=16)
    frame = generate_niah(tokenizer, max_seq_length=minimum, **common)
    assert (frame["total_length"] <= minimum).all()
    with pytest.raises(ValueError, match="leaves no room"):
        generate_niah(tokenizer, max_seq_length=minimum - 1, **common)
