"""Where the shipped evaluation data lives in the repository."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
LONGBENCH_DIR = REPO_ROOT / "data" / "longbench"
RULER_DIR = REPO_ROOT / "data" / "ruler"
CORPUS_PATH = REPO_ROOT / "data" / "corpus" / "python_docs.parquet"
