"""Fixtures for the demo-data tests: the generator module and one evaluation-file index per session."""

import importlib.util
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def make_qa():
    """`scripts/make_ruler_qa_train.py` imported as a module (scripts/ is not a package)."""
    path = REPO_ROOT / "scripts" / "make_ruler_qa_train.py"
    spec = importlib.util.spec_from_file_location("make_ruler_qa_train", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def eval_index(make_qa):
    """Sentences of every shipped data/ruler and data/longbench file (built once: a few seconds)."""
    return make_qa.EvalIndex(make_qa.eval_files(make_qa.DEFAULT_EVAL_GLOBS), 8)
