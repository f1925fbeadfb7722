"""scripts/prepare_midtrain_data.py on a small local SlimPajama-style sample."""

import importlib.util
import json

import pandas as pd
import pytest

from refine.scoring.paths import CORPUS_PATH, REPO_ROOT


def _load_script():
    path = REPO_ROOT / "scripts" / "prepare_midtrain_data.py"
    spec = importlib.util.spec_from_file_location("prepare_midtrain_data", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sample(tmp_path_factory, tiny_tokenizer_dir):
    corpus = pd.read_parquet(CORPUS_PATH)
    texts = list(corpus.text[:40]) + ["", "ü" * 30]  # an empty and a multi-byte document
    root = tmp_path_factory.mktemp("slimpajama")
    meta = [{"redpajama_set_name": f"set{i % 3}"} for i in range(len(texts))]
    frame = pd.DataFrame({"text": texts, "meta": meta})
    frame.iloc[:25].to_parquet(root / "train-0.parquet")
    frame.iloc[25:].to_parquet(root / "train-1.parquet")
    frame.iloc[:7].to_parquet(root / "val-0.parquet")
    return root, frame


def _run(script, root, out, tokenizer_dir, *extra):
    return script.main([
        "--train-files", str(root / "train-*.parquet"), "--val-files", str(root / "val-0.parquet"),
        "--tokenizer", str(tokenizer_dir), "--min-tokens", "1500", "--batch-size", "8", "--out-dir", str(out), *extra,
    ])  # fmt: skip


def test_keeps_exactly_the_long_documents(sample, tiny_tokenizer, tiny_tokenizer_dir, tmp_path, capsys):
    root, frame = sample
    script = _load_script()
    summary = _run(script, root, tmp_path / "a", tiny_tokenizer_dir)
    lengths = [len(tiny_tokenizer(t, add_special_tokens=False)["input_ids"]) for t in frame.text]
    want = [(t, n) for t, n in zip(frame.text, lengths) if n >= 1500]
    assert 0 < len(want) < len(frame)  # the threshold really splits the sample
    train = pd.read_parquet(tmp_path / "a" / "train.parquet")
    assert list(zip(train.text, train.num_tokens)) == want  # order kept, counts exact
    assert list(train.columns) == ["text", "meta", "num_tokens"]
    val = pd.read_parquet(tmp_path / "a" / "val.parquet")
    assert list(val.text) == list(frame.text[:7])  # validation unfiltered by default
    train_summary = summary["splits"][0]
    assert train_summary["documents_read"] == len(frame) and train_summary["documents_kept"] == len(want)
    assert train_summary["tokens_kept"] == sum(n for _, n in want)
    assert json.loads((tmp_path / "a" / "summary.json").read_text()) == summary
    printed = capsys.readouterr()
    assert "train" in printed.out and str(len(want)) in printed.out
    assert "train: scanning" in printed.err  # tqdm progress bar


def test_byte_prefilter_changes_nothing_and_caps_apply(sample, tiny_tokenizer_dir, tmp_path):
    root, _ = sample
    script = _load_script()
    _run(script, root, tmp_path / "a", tiny_tokenizer_dir)
    _run(script, root, tmp_path / "b", tiny_tokenizer_dir, "--no-byte-prefilter")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a" / "train.parquet"),
                                  pd.read_parquet(tmp_path / "b" / "train.parquet"))
    summary = _run(script, root, tmp_path / "c", tiny_tokenizer_dir, "--max-train-docs", "2", "--max-val-docs", "3",
                   "--val-min-tokens", "1")
    assert [s["documents_kept"] for s in summary["splits"]] == [2, 3]


def test_bad_input(sample, tiny_tokenizer_dir, tmp_path):
    root, _ = sample
    script = _load_script()
    with pytest.raises(ValueError, match="--train-files"):
        script.main(["--train-files", str(root / "missing-*.parquet"), "--tokenizer", str(tiny_tokenizer_dir),
                     "--out-dir", str(tmp_path)])
    with pytest.raises(ValueError, match="'body'"):
        script.main(["--train-files", str(root / "train-0.parquet"), "--tokenizer", str(tiny_tokenizer_dir),
                     "--text-column", "body", "--out-dir", str(tmp_path)])
    with pytest.raises(SystemExit):
        script.main(["--train-files", "x", "--tokenizer", "y", "--out-dir", "z", "--min-tokens", "0"])
