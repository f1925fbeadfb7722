"""Fill the caches lm-eval's RULER NIAH tasks read, so they run on compute nodes without network.

Run once on a node with hub access, with the cache folders the compute nodes will see (a shared file system):

    export HF_DATASETS_CACHE=/shared/hf/datasets NLTK_DATA=/shared/nltk_data
    python scripts/cache_niah_data.py

then on the compute nodes run `python -m refine.eval.harness ...` with the same HF_DATASETS_CACHE and NLTK_DATA
plus HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1. It stores the essay haystack (hub dataset baber/paul_graham_essays) in
the datasets cache and nltk's punkt_tab in NLTK_DATA (first folder). Where no node reaches the hub, copy the
dataset's parquet file over and pass `--essays-from FILE` (.parquet/.jsonl/.json with a `text` column): it is written
as that dataset's cache entry. punkt_tab already found by nltk is not downloaded again.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--essays-from", type=Path, help="local essays file instead of the hub download")
    parser.add_argument("--nltk-dir", type=Path,
                        default=Path(os.environ.get("NLTK_DATA", "~/nltk_data").split(os.pathsep)[0]).expanduser(),
                        help="where punkt_tab goes (default: first NLTK_DATA folder, else ~/nltk_data)")
    args = parser.parse_args(argv)

    import nltk

    from refine.eval.harness_data import PUNKT_PATH, cache_essays, cache_punkt

    try:
        essays = cache_essays(args.essays_from)
    except (ValueError, ConnectionError) as error:  # a bad --essays-from file, or no route to the hub
        print(f"cache_niah_data: {error}", file=sys.stderr)
        return 2
    print(f"essay haystack cached in {essays}")
    try:
        punkt = Path(str(nltk.data.find(PUNKT_PATH)))
        print(f"punkt_tab already present: {punkt}")
    except LookupError:
        try:
            punkt = cache_punkt(args.nltk_dir)
        except (RuntimeError, ValueError, OSError) as error:
            print(f"cache_niah_data: punkt_tab download into {args.nltk_dir} failed: {error}", file=sys.stderr)
            return 1
        print(f"punkt_tab downloaded to {punkt}")
    nltk_root = punkt.parents[2]  # <root>/tokenizers/punkt_tab/english
    print(f"offline runs: export HF_DATASETS_CACHE={essays.parent} NLTK_DATA={nltk_root} "
          "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
