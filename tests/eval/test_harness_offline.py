"""lm-eval's RULER NIAH tasks offline: what they fetch (checked against lm-eval's own source), the cache filler, the
one-line error for missing data, and one essay task run through `python -m refine.eval.harness` on a tiny DeltaNet
with a tiny haystack put in the datasets cache. No network: the essays and nltk's punkt_tab are made here.

lm-eval is installed by scripts/setup.sh (the `eval` extra); without it these tests fail, naming the install.
"""

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from refine.eval import harness_data
from refine.scoring.paths import CORPUS_PATH, REPO_ROOT
from refine.scoring.ruler import NIAH_TASKS

CACHE_SCRIPT = REPO_ROOT / "scripts/cache_niah_data.py"


def _lm_eval_ruler_dir() -> Path:
    spec = importlib.util.find_spec("lm_eval")
    if spec is None:
        pytest.fail("lm-eval is not installed; run scripts/setup.sh (or pip install -e '.[eval]')")
    return Path(spec.submodule_search_locations[0]) / "tasks" / "ruler"


def _write_essays(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    return path


def _write_punkt(nltk_root: Path) -> Path:
    """A punkt_tab model with nothing learned (its four files, empty): splits at every sentence end."""
    model = nltk_root / harness_data.PUNKT_PATH
    model.mkdir(parents=True, exist_ok=True)
    for name in ("collocations.tab", "sent_starters.txt", "abbrev_types.txt", "ortho_context.tab"):
        (model / name).write_text("")
    return nltk_root


@pytest.fixture(scope="module")
def corpus_essays():
    """The tiny stand-in for Paul Graham's essays: the first 20 words of three documents of the bundled corpus, so
    that the whole haystack fits a 1024-token sample (lm-eval adds essay words 500 at a time, else keeps one)."""
    import pandas as pd

    return [" ".join(text.split()[:20]) for text in pd.read_parquet(CORPUS_PATH)["text"].head(3)]


@pytest.fixture
def offline_datasets_cache(tmp_path, monkeypatch):
    import datasets

    assert datasets.config.HF_HUB_OFFLINE, "tests/conftest.py sets HF_HUB_OFFLINE=1 before datasets is imported"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    return tmp_path / "datasets"


# ---- what lm-eval fetches, read from its source files (not imported: importing prepare_niah downloads punkt_tab)


def test_essay_tasks_are_the_ones_lm_eval_builds_from_essays():
    tree = ast.parse((_lm_eval_ruler_dir() / "niah_utils.py").read_text())
    haystack_of = {}
    for function in tree.body:
        if isinstance(function, ast.FunctionDef) and function.name in NIAH_TASKS:
            calls = [node for node in ast.walk(function) if isinstance(node, ast.Call)
                     and getattr(node.func, "id", None) == "get_haystack"]
            haystack_of[function.name] = {kw.value.value for call in calls for kw in call.keywords}
    assert set(haystack_of) == set(NIAH_TASKS)
    assert harness_data.ESSAY_TASKS == tuple(task for task in NIAH_TASKS if haystack_of[task] == {"essay"})
    assert len(harness_data.ESSAY_TASKS) == 5


def test_names_match_lm_eval_source():
    prepare = (_lm_eval_ruler_dir() / "prepare_niah.py").read_text()
    assert f'datasets.load_dataset("{harness_data.ESSAYS_DATASET}", split="train")' in prepare
    assert f'nltk.download("{harness_data.PUNKT_RESOURCE}")' in prepare
    group = (_lm_eval_ruler_dir() / "ruler.yaml").read_text()
    assert f"group: {harness_data.RULER_GROUP}\n" in group
    assert all(f"  - {task}\n" in group for task in NIAH_TASKS)


def test_requested_tasks_parse_like_lm_eval():
    from lm_eval._cli.harness import HarnessCLI

    argv = ["--model", "refine", "--tasks", "niah_single_1,niah_single_2", "-t", "ruler", "x", "--tasks=niah_single_3",
            "--limit", "2"]
    assert harness_data.requested_tasks(argv) == HarnessCLI()._parser.parse_args(["run", *argv]).tasks
    assert harness_data.requested_tasks(["ls", "tasks"]) == []
    assert harness_data.essay_tasks(["niah_single_1", "niah_multivalue"]) == ["niah_multivalue"]
    assert harness_data.essay_tasks(["ruler"]) == list(harness_data.ESSAY_TASKS)


# ---- cache filler and the check, in process


def test_cache_essays_is_what_an_offline_load_dataset_returns(offline_datasets_cache, tmp_path):
    import datasets

    first = _write_essays(tmp_path / "first.jsonl", ["One essay. Two sentences.", "Another essay."])
    root = harness_data.cache_essays(first)
    assert root == offline_datasets_cache / "baber___paul_graham_essays"
    loaded = datasets.load_dataset(harness_data.ESSAYS_DATASET, split="train")
    assert list(loaded["text"]) == ["One essay. Two sentences.", "Another essay."]
    # a second file replaces the first (not the default "reuse what is there")
    harness_data.cache_essays(_write_essays(tmp_path / "second.jsonl", ["Only this one."]))
    assert list(datasets.load_dataset(harness_data.ESSAYS_DATASET, split="train")["text"]) == ["Only this one."]


def test_cache_essays_rejects_bad_files(offline_datasets_cache, tmp_path):
    wrong_column = tmp_path / "essays.jsonl"
    wrong_column.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"no `text` column \(columns: \['body'\]\)"):
        harness_data.cache_essays(wrong_column)
    with pytest.raises(ValueError, match=r"essays\.txt: need an existing file ending in \.jsonl"):
        harness_data.cache_essays(tmp_path / "essays.txt")


def test_check_names_what_is_missing_offline(offline_datasets_cache, tmp_path, monkeypatch):
    import nltk

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "nltk")])
    harness_data.check_niah_data(["niah_single_1", "niah_multikey_2"])  # no essays needed: nothing checked

    with pytest.raises(harness_data.MissingEvalData) as missing:
        harness_data.check_niah_data(["niah_single_1", "niah_single_3"])
    message = str(missing.value)
    assert "\n" not in message
    assert message.startswith("niah_single_3 needs lm-eval's essay haystack, the hub dataset baber/paul_graham_essays")
    assert str(offline_datasets_cache) in message and harness_data.CACHE_COMMAND in message

    harness_data.cache_essays(_write_essays(tmp_path / "essays.jsonl", ["An essay."]))
    with pytest.raises(harness_data.MissingEvalData, match=r"^niah_single_2, niah_single_3, niah_multikey_1, "
                       r"niah_multivalue, niah_multiquery need nltk's punkt_tab .* cannot download offline"):
        harness_data.check_niah_data(["ruler"])

    _write_punkt(tmp_path / "nltk")
    assert harness_data.check_niah_data(["ruler"]) is None


# ---- the harness entry, as a user runs it (fresh process: the offline settings are read at import)


def _offline_env(tmp_path: Path) -> dict:
    env = {key: value for key, value in os.environ.items() if key not in ("HF_DATASETS_CACHE", "NLTK_DATA")}
    env.update(HF_HOME=str(tmp_path / "hf"), NLTK_DATA=str(tmp_path / "nltk"), HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return env


def _run(args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], check=False, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def tiny_deltanet_dir(tmp_path_factory, tiny_tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    import refine.models  # noqa: F401  registers fla's classes with the Auto classes
    from refine.models.tiny import tiny_deltanet_config

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_deltanet")
    AutoModelForCausalLM.from_config(tiny_deltanet_config()).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def test_harness_entry_fails_in_one_line_when_the_haystack_is_not_cached(tmp_path):
    _lm_eval_ruler_dir()
    done = _run(["-m", "refine.eval.harness", "--model", "refine", "--model_args", "pretrained=/no/such/checkpoint",
                 "--tasks", "niah_single_1,niah_multivalue"], _offline_env(tmp_path), tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "ConnectionError" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("refine.eval.harness: niah_multivalue needs lm-eval's essay haystack, the hub dataset "
                           "baber/paul_graham_essays, which is not in the datasets cache "
                           f"{tmp_path / 'hf' / 'datasets'}")
    assert f"NLTK_DATA={tmp_path / 'nltk'} {harness_data.CACHE_COMMAND}" in last


def test_harness_entry_runs_an_essay_niah_task_offline(tmp_path, tiny_deltanet_dir, corpus_essays):
    env = _offline_env(tmp_path)
    _write_punkt(tmp_path / "nltk")
    essays = _write_essays(tmp_path / "essays.jsonl", corpus_essays)
    cached = _run([str(CACHE_SCRIPT), "--essays-from", str(essays)], env, tmp_path)
    assert cached.returncode == 0, cached.stderr[-3000:]
    assert f"export HF_DATASETS_CACHE={tmp_path / 'hf' / 'datasets'} NLTK_DATA={tmp_path / 'nltk'}" in cached.stdout

    done = _run(["-m", "refine.eval.harness", "--model", "refine",
                 "--model_args", f"pretrained={tiny_deltanet_dir},max_length=1024", "--tasks", "niah_single_2",
                 "--metadata", '{"max_seq_lengths":[1024]}', "--limit", "2", "--gen_kwargs", "max_gen_toks=8",
                 "--batch_size", "1", "--device", "cpu", "--output_path", str(tmp_path / "out"), "--log_samples"],
                env, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]

    [samples_file] = (tmp_path / "out").rglob("samples_niah_single_2_*.jsonl")
    samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
    assert len(samples) == 2
    for sample in samples:
        prompt, [answer] = sample["doc"]["input"], sample["doc"]["outputs"]
        for essay in corpus_essays:  # the haystack came from our cache entry (needles go between sentences)
            assert " ".join(essay.split()[:4]) in prompt
        assert f"is: {answer}." in prompt  # RULER's needle sentence
        # RULER's string_match_all of the one answer in the (post-processed) generation, computed here by hand
        assert sample["1024"] == float(answer.lower() in sample["filtered_resps"][0].lower())
    [results_file] = (tmp_path / "out").rglob("results_*.json")
    results = json.loads(results_file.read_text())["results"]["niah_single_2"]
    assert results["1024,none"] == pytest.approx(sum(s["1024"] for s in samples) / 2)
