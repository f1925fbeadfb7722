"""The data lm-eval's RULER NIAH tasks fetch at run time, and how to have it on a compute node without network.

lm-eval 0.4.13 builds each RULER NIAH task on the fly (`lm_eval/tasks/ruler/prepare_niah.py`): the five "essay"
tasks load the hub dataset `baber/paul_graham_essays` with `datasets.load_dataset` and split it into sentences with
nltk's `punkt_tab` model, which that module tries to download when it is imported. The three other tasks
(niah_single_1, niah_multikey_2, niah_multikey_3) build their haystack from fixed sentences and need neither.

Offline, `datasets` falls back to its own cache (HF_DATASETS_CACHE) and nltk reads NLTK_DATA, so filling both once on
a node with hub access (`scripts/cache_niah_data.py`) is enough. `check_niah_data` runs before lm-eval and raises
`MissingEvalData` (one line: what is missing, where it looked, the command that fills it) instead of lm-eval's
ConnectionError / nltk LookupError deep inside the task build.
"""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from refine.eval.niah import NIAH_CONFIGS

# The names lm-eval reads (lm_eval/tasks/ruler/prepare_niah.py); tests check them against its source.
ESSAYS_DATASET = "baber/paul_graham_essays"
PUNKT_RESOURCE = "punkt_tab"
PUNKT_PATH = "tokenizers/punkt_tab/english/"  # what nltk.sent_tokenize loads for English
RULER_GROUP = "ruler"  # lm-eval's group of all RULER tasks, NIAH included
ESSAY_TASKS = tuple(task for task, config in NIAH_CONFIGS.items() if config.haystack == "essay")
CACHE_COMMAND = "python scripts/cache_niah_data.py"
# Local essay files `cache_essays` reads (a `text` column), by the `datasets` packaged builder that reads them.
ESSAY_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
# Where an offline run's `datasets` looks for a cached hub dataset: <cache>/<namespace>___<name>/<config>/<version>/<hash>
_CACHE_ENTRY = ("default", "0.0.0", "local")


class MissingEvalData(RuntimeError):
    """Data an lm-eval task needs is neither cached here nor downloadable. The message is one line."""


def requested_tasks(argv: Sequence[str]) -> list[str]:
    """The task names an lm-eval command line asks for (`--tasks a,b`, `-t a b`, repeated flags); [] for `ls`."""
    if argv and argv[0] in ("ls", "validate"):
        return []
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-t", "--tasks", nargs="+", action="append", default=[])
    known, _ = parser.parse_known_args(list(argv))
    return [name for group in known.tasks for value in group for name in value.split(",") if name]


def essay_tasks(tasks: Sequence[str]) -> list[str]:
    """The requested tasks that read the essay haystack (the whole RULER group counts as all of them)."""
    if RULER_GROUP in tasks:
        return list(ESSAY_TASKS)
    return [task for task in ESSAY_TASKS if task in tasks]


def datasets_cache_dir() -> Path:
    import datasets

    return Path(datasets.config.HF_DATASETS_CACHE)


def hub_offline() -> bool:
    """HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set (as `datasets` reads them)."""
    import datasets

    return bool(datasets.config.HF_HUB_OFFLINE)


def _fill_hint() -> str:
    nltk_dir = os.environ.get("NLTK_DATA", "<dir>").split(os.pathsep)[0]
    return (f"on a node with hub access run `HF_DATASETS_CACHE={datasets_cache_dir()} NLTK_DATA={nltk_dir} "
            f"{CACHE_COMMAND}`, then run here with the same HF_DATASETS_CACHE and NLTK_DATA")


def check_niah_data(tasks: Sequence[str]) -> None:
    """Raise `MissingEvalData` when a requested essay task cannot get its haystack or nltk's sentence splitter.

    Online, a missing dataset or punkt_tab is downloaded here (lm-eval would download it anyway); offline
    (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE, or no route to the hub) it must already be cached.
    """
    needing = essay_tasks(tasks)
    if not needing:
        return
    import datasets

    who = f"{', '.join(needing)} {'needs' if len(needing) == 1 else 'need'}"
    try:
        datasets.load_dataset(ESSAYS_DATASET, split="train")
    except ConnectionError:
        raise MissingEvalData(
            f"{who} lm-eval's essay haystack, the hub dataset {ESSAYS_DATASET}, which is not in the datasets "
            f"cache {datasets_cache_dir()} and the hub cannot be reached; {_fill_hint()}"
        ) from None
    import nltk

    try:
        nltk.data.find(PUNKT_PATH)
        return
    except LookupError:
        pass
    if not hub_offline() and nltk.download(PUNKT_RESOURCE, quiet=True):
        return
    raise MissingEvalData(
        f"{who} nltk's {PUNKT_RESOURCE} sentence splitter, which nltk does not find (NLTK_DATA="
        f"{os.environ.get('NLTK_DATA', 'unset')}) and cannot download{' offline' if hub_offline() else ''}; {_fill_hint()}"
    )


def cache_essays(source: str | Path | None = None) -> Path:
    """Put the essay haystack in the datasets cache (HF_DATASETS_CACHE) where an offline `load_dataset` finds it.

    Without `source` it is downloaded from the hub (exactly what lm-eval would do online). With `source`, a local
    .jsonl/.json/.parquet file with a `text` column (for example the dataset's own parquet file copied from a
    machine with hub access) is written as that dataset's cache entry. Returns the cache folder of the dataset.
    """
    import datasets

    root = datasets_cache_dir() / "___".join(ESSAYS_DATASET.split("/"))
    if source is None:
        datasets.load_dataset(ESSAYS_DATASET, split="train")
        return root
    source = Path(source)
    builder_name = ESSAY_FILE_BUILDERS.get(source.suffix)
    if builder_name is None or not source.is_file():
        raise ValueError(f"--essays-from {source}: need an existing file ending in {', '.join(ESSAY_FILE_BUILDERS)}")
    # datasets' own builder writes the arrow files and dataset_info.json, named as the offline cache lookup expects
    builder_class = type(datasets.load_dataset_builder(builder_name, data_files={"train": [str(source)]}))
    builder = builder_class(dataset_name=ESSAYS_DATASET.split("/")[1], data_files={"train": [str(source.resolve())]})
    entry = root.joinpath(*_CACHE_ENTRY)
    # rebuilt every time: the default mode would keep an earlier file's entry and silently ignore this one
    builder.download_and_prepare(output_dir=str(entry), download_mode=datasets.DownloadMode.FORCE_REDOWNLOAD)
    columns = list(datasets.DatasetInfo.from_directory(str(entry)).features)
    if "text" not in columns:
        shutil.rmtree(entry)
        raise ValueError(f"--essays-from {source}: the file has no `text` column (columns: {columns})")
    return root


def cache_punkt(download_dir: str | Path) -> Path:
    """Download nltk's punkt_tab into `download_dir` (an NLTK_DATA folder); raise if the download fails."""
    import nltk

    if not nltk.download(PUNKT_RESOURCE, download_dir=str(download_dir), quiet=True, raise_on_error=True):
        raise RuntimeError(f"nltk could not download {PUNKT_RESOURCE} into {download_dir}")
    return Path(download_dir) / PUNKT_PATH
