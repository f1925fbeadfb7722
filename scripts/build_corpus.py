"""Build the small bundled text corpus `data/corpus/python_docs.parquet` (columns: title, text).

Source: the Python Language Reference topics that CPython ships in `pydoc_data.topics` (PSF licence), so the
corpus is reproducible offline on any machine with the same Python minor version. It feeds the tiny tokenizer,
the demo model's pre-training, the mid-training demo and the offline NIAH / RULER-style generators.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pandas as pd


def load_topics() -> list[tuple[str, str]]:
    import pydoc_data.topics as topics

    rows = []
    for title in sorted(topics.topics):
        text = topics.topics[title]
        text = re.sub(r"[ \t]+\n", "\n", text).strip()
        if text:
            rows.append((title, text))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "data/corpus/python_docs.parquet"))
    args = parser.parse_args(argv)
    rows = load_topics()
    frame = pd.DataFrame(rows, columns=["title", "text"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(args.out, index=False)
    print(f"wrote {len(frame)} documents, {frame.text.str.len().sum()} characters -> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
