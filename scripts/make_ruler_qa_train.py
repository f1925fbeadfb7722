"""Build a RULER-style QA train set from the text bundled in the repo (never from evaluation files).

Why: the official post-training uses `ruler_{squadqa,hotpotqa}_<model>_<len>_1600_train.parquet`, which are not
shipped. This script writes files with the same columns as `data/ruler/*.parquet`
(`index, prompt, answer (list[str]), prompt_length, max_answer_length, total_length, max_seq_length, task`) and the
same prompt template ("Answer the question based on the given passages. ... Document 1: ... Question: ...\nAnswer:").

Source text: `data/corpus/python_docs.parquet` (the Python Language Reference topics that CPython ships in
`pydoc_data.topics`). Passages are prose sentences of that corpus grouped into short paragraphs.

Question type (synthetic fact retrieval): one passage (the gold document, at a random depth) gets a sentence
    'The <attribute> of the section "<section heading>" is <Value>.'
inserted at a random sentence boundary, and `--distractor-facts` other passages get the same attribute for
*other* sections with other values, so the model must match the section, not just find "the" fact. The question is
    'What is the <attribute> of the section "<section heading>"?'
and the single gold answer is `<Value>` (e.g. "Amber Falcon 42"), which appears exactly once in the prompt.

Sizes are counted in tokens of `--tokenizer` (no special tokens, as the dataset tokenises): each prompt has at most
`max_seq_length - answer_budget` tokens (the official rows satisfy `prompt_length + 32 <= max_seq_length`), and
at least `min_fill` of that. Output is deterministic for a seed. Train and val splits use disjoint corpus sections.

Overlap check: every document sentence (>= `--min-overlap-words` words, whitespace and case normalised) of every
output prompt is looked up among the sentences of all `data/ruler` and `data/longbench` files; corpus passages
that share a sentence with them are dropped before sampling, and the script exits with status 1 if an output
prompt still shares one. `--check FILE ...` runs only that check on existing RULER-format files.
"""

from __future__ import annotations

import argparse
import glob
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = REPO_ROOT / "data" / "corpus" / "python_docs.parquet"
DEFAULT_OUT_DIR = REPO_ROOT / "data" / "ruler_train"
DEFAULT_DEMO_MODEL = REPO_ROOT / "data" / "demo" / "model"
DEFAULT_EVAL_GLOBS = (
    str(REPO_ROOT / "data" / "ruler" / "*.parquet"),
    str(REPO_ROOT / "data" / "longbench" / "*.parquet"),
)

# The RULER QA template, as in the official test files.
INSTRUCTION = (
    "Answer the question based on the given passages. Only give me the answer and do not output any other words."
)
HEAD = INSTRUCTION + "\n\nThe following are given passages.\n"
DOCUMENT = "Document {i}:\n{text}\n\n"
TAIL = INSTRUCTION + "\n\nQuestion: {question}\nAnswer:"
DOCUMENT_SPLIT = re.compile(r"(?:^|\n\n)Document \d+:\n")

COLUMNS = ["index", "prompt", "answer", "prompt_length", "max_answer_length", "total_length", "max_seq_length", "task"]

ATTRIBUTES = ["archive code", "review keyword", "catalogue label", "index tag", "editor's codename", "shelf mark"]
ADJECTIVES = (
    "Amber Azure Bold Brisk Calm Cobalt Crimson Dusky Eager Emerald Fading Gentle Golden Hidden Ivory Jade Keen "
    "Lunar Misty Noble Olive Pale Quiet Rapid Rustic Scarlet Silent Silver Solar Steady Swift Tawny Umber Velvet "
    "Violet Wandering Wild Winter Young Zesty"
).split()
NOUNS = (
    "Anchor Badger Beacon Bison Cedar Comet Condor Delta Falcon Fern Glacier Harbor Heron Island Jaguar Kestrel "
    "Lantern Lynx Maple Meadow Nebula Orchid Otter Panther Pebble Quartz Raven Ridge Sparrow Summit Thistle Tiger "
    "Tundra Valley Walrus Willow Yarrow Zephyr Lotus Marble"
).split()

SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+")
WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Sentence:
    section: str  # the heading of the corpus document it comes from
    text: str
    n_tokens: int


@dataclass(frozen=True)
class Passage:
    section: str
    sentences: tuple[str, ...]
    n_tokens: int

    @property
    def text(self) -> str:
        return " ".join(self.sentences)


# ----------------------------------------------------------------------------------------------------------------
# Overlap check


def normalise(text: str) -> str:
    """Case- and whitespace-insensitive form used for overlap comparison."""
    return WHITESPACE.sub(" ", text).strip().lower()


def sentences_of(text: str, min_words: int) -> list[str]:
    """Normalised sentences of `text` with at least `min_words` words."""
    out = []
    for piece in SENTENCE_SPLIT.split(text):
        if len(piece) < 2 * min_words:  # cheap pre-filter: n words need >= 2n - 1 characters
            continue
        words = piece.split()
        if len(words) >= min_words:
            out.append(" ".join(words).lower())
    return out


def documents_of_prompt(prompt: str) -> list[str]:
    """The passage texts of a RULER-format prompt (between the header and the final instruction)."""
    start = prompt.find("Document 1:\n")
    end = prompt.rfind(INSTRUCTION)
    if start < 0 or end <= start:
        raise ValueError(
            f"prompt is not in the RULER QA format (no 'Document 1:' before the final instruction): {prompt[:80]!r}"
        )
    body = prompt[start:end]
    return [doc.strip() for doc in DOCUMENT_SPLIT.split(body) if doc.strip()]


def eval_files(globs: list[str] | tuple[str, ...]) -> list[str]:
    files = sorted({f for pattern in globs for f in glob.glob(pattern)})
    if not files:
        raise ValueError(f"--eval-files matched no file: {list(globs)}")
    return files


class EvalIndex:
    """The normalised sentences (>= `min_words` words) of every string column of the evaluation files.

    Built once per run (a few seconds for the shipped files); lookups are by hash, with the file remembered so that
    an overlap can be reported.
    """

    def __init__(self, files: list[str], min_words: int):
        import pyarrow.parquet as pq
        import pyarrow.types as pat

        self.files = files
        self.min_words = min_words
        self._where: dict[int, int] = {}
        for number, path in enumerate(files):
            table = pq.read_table(path)
            for field in table.schema:
                if not (pat.is_string(field.type) or pat.is_large_string(field.type)):
                    continue
                for value in table.column(field.name).to_pylist():
                    for sentence in sentences_of(value or "", min_words):
                        self._where.setdefault(hash(sentence), number)

    def shared(self, passages: list[str]) -> list[tuple[str, str]]:
        """(sentence, file name) for each sentence of `passages` that also occurs in an evaluation file."""
        hits = []
        for passage in passages:
            for sentence in sentences_of(passage, self.min_words):
                number = self._where.get(hash(sentence))
                if number is not None:
                    hits.append((sentence, Path(self.files[number]).name))
        return hits

    def overlapping(self, texts: dict[str, list[str]]) -> dict[str, list[tuple[str, str]]]:
        """key -> shared sentences, for the keys of `texts` (key -> passage texts) that share any."""
        return {key: hits for key, passages in texts.items() if (hits := self.shared(passages))}


def check_files(files: list[str], eval_globs, min_words: int) -> int:
    """Overlap check of existing RULER-format files; returns the number of overlapping rows (prints them)."""
    index = EvalIndex(eval_files(eval_globs), min_words)
    texts = {}
    for path in files:
        frame = pd.read_parquet(path, columns=["prompt"])
        for row, prompt in enumerate(frame["prompt"]):
            texts[f"{Path(path).name}:{row}"] = documents_of_prompt(prompt)
    hits = index.overlapping(texts)
    for key, shared in sorted(hits.items()):
        print(f"OVERLAP {key}: {shared[0][0][:100]!r} also in {shared[0][1]}", file=sys.stderr)
    return len(hits)


# ----------------------------------------------------------------------------------------------------------------
# Passages from the corpus


def load_tokenizer(spec: str | None):
    """`tiny` -> the tiny demo tokenizer trained on the corpus; a path -> AutoTokenizer from that local path.

    None: `data/demo/model` when it exists, else the tiny tokenizer (same vocabulary as the demo model).
    """
    if spec is None:
        spec = str(DEFAULT_DEMO_MODEL) if (DEFAULT_DEMO_MODEL / "tokenizer_config.json").exists() else "tiny"
    if spec == "tiny":
        sys.path.insert(0, str(REPO_ROOT))
        from refine.models.tiny import train_tiny_tokenizer

        return train_tiny_tokenizer(), "tiny"
    from transformers import AutoTokenizer

    if not Path(spec).exists():
        raise ValueError(f"--tokenizer {spec!r}: no such local path (give a model/tokenizer folder or 'tiny')")
    return AutoTokenizer.from_pretrained(spec), spec


def count_tokens(tokenizer, texts: list[str]) -> list[int]:
    """Token counts as the dataset computes them (no special tokens)."""
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def corpus_sentences(corpus: Path, tokenizer, min_words: int) -> list[list[Sentence]]:
    """Prose paragraphs of the corpus as lists of sentences (code, grammar and headings are skipped)."""
    frame = pd.read_parquet(corpus)
    if "text" not in frame.columns:
        raise ValueError(f"--corpus {corpus}: no column 'text' (columns: {list(frame.columns)})")
    paragraphs: list[tuple[str, list[str]]] = []
    for text in frame["text"]:
        blocks = re.split(r"\n\s*\n", text)
        heading = blocks[0].strip().splitlines()[0].strip() if blocks and blocks[0].strip() else "untitled"
        section = heading.replace('"', "'")  # the question quotes the heading in double quotes
        for block in blocks:
            lines = block.splitlines()
            # Indented blocks are code or grammar; lines of * = - are heading underlines.
            underlined = any(re.fullmatch(r"[*=\-~^]+", ln.strip()) for ln in lines)
            if not lines or lines[0].startswith((" ", "\t")) or underlined:
                continue
            prose = WHITESPACE.sub(" ", block).strip()
            if prose.endswith(":") or len(prose.split()) < min_words:
                continue
            sentences = [s for s in SENTENCE_SPLIT.split(prose) if len(s.split()) >= 4]
            if sentences:
                paragraphs.append((section, sentences))
    flat = [s for _, sentences in paragraphs for s in sentences]
    counts = iter(count_tokens(tokenizer, flat))
    return [[Sentence(section, s, next(counts)) for s in sentences] for section, sentences in paragraphs]


def make_passages(paragraphs: list[list[Sentence]], max_tokens: int, min_words: int) -> list[Passage]:
    """Consecutive sentences of one paragraph grouped greedily into passages of at most `max_tokens` tokens."""
    passages = []
    for sentences in paragraphs:
        group: list[Sentence] = []
        for sentence in sentences + [None]:
            if sentence is not None and sum(s.n_tokens + 1 for s in group) + sentence.n_tokens <= max_tokens:
                group.append(sentence)
                continue
            if group and sum(len(s.text.split()) for s in group) >= min_words:
                n_tokens = sum(s.n_tokens + 1 for s in group)
                passages.append(Passage(group[0].section, tuple(s.text for s in group), n_tokens))
            group = [sentence] if sentence is not None and sentence.n_tokens <= max_tokens else []
    return passages


def split_sections(passages: list[Passage], val_fraction: float, seed: int) -> tuple[list[Passage], list[Passage]]:
    """Train / val passage pools from disjoint corpus sections, sharing no sentence."""
    sections = sorted({p.section for p in passages})
    random.Random(f"sections:{seed}").shuffle(sections)
    n_val = round(len(sections) * val_fraction) if val_fraction > 0 else 0
    val_sections = set(sections[:n_val])
    train = [p for p in passages if p.section not in val_sections]
    # Some reference topics repeat sentences of others: val keeps only passages with no sentence seen in train.
    seen = {s for p in train for s in sentences_of(p.text, 1)}
    val = [p for p in passages if p.section in val_sections and seen.isdisjoint(sentences_of(p.text, 1))]
    return train, val


# ----------------------------------------------------------------------------------------------------------------
# Rows


def insert_sentence(passage: Passage, fact: str, rng: random.Random) -> str:
    sentences = list(passage.sentences)
    sentences.insert(rng.randint(0, len(sentences)), fact)
    return " ".join(sentences)


def fact_values(n: int, rng: random.Random) -> list[str]:
    """`n` distinct values like "Amber Falcon 42"."""
    space = len(ADJECTIVES) * len(NOUNS) * 90
    if n > space:
        raise ValueError(f"too many rows for distinct answers: {n} > {space}")
    out = []
    for code in rng.sample(range(space), n):
        code, number = divmod(code, 90)
        adjective, noun = divmod(code, len(NOUNS))
        out.append(f"{ADJECTIVES[adjective]} {NOUNS[noun]} {number + 10}")
    return out


def build_rows(
    pool: list[Passage],
    tokenizer,
    *,
    n_rows: int,
    max_seq_length: int,
    answer_budget: int,
    min_fill: float,
    distractor_facts: int,
    seed: int,
    task: str,
    split: str,
) -> pd.DataFrame:
    """`n_rows` RULER-format rows from `pool`; deterministic for (pool, tokenizer, seed, split)."""
    budget = max_seq_length - answer_budget
    sections = sorted({p.section for p in pool})
    if len(sections) < distractor_facts + 1:
        raise ValueError(f"the {split} pool has {len(sections)} sections; need > --distractor-facts={distractor_facts}")
    rng = random.Random(f"{split}:{seed}")
    values = fact_values(n_rows * (distractor_facts + 1), rng)
    by_section: dict[str, list[int]] = {}
    for i, p in enumerate(pool):
        by_section.setdefault(p.section, []).append(i)
    rows = []
    for row in range(n_rows):
        row_values = values[row * (distractor_facts + 1) : (row + 1) * (distractor_facts + 1)]
        attribute = rng.choice(ATTRIBUTES)
        for _attempt in range(50):
            fact_sections = rng.sample(sections, distractor_facts + 1)
            fact_ids = [rng.choice(by_section[s]) for s in fact_sections]
            facts = [f'The {attribute} of the section "{s}" is {v}.' for s, v in zip(fact_sections, row_values)]
            question = f'What is the {attribute} of the section "{fact_sections[0]}"?'
            target = rng.randint(int(min_fill * budget), budget)
            fixed = count_tokens(tokenizer, [HEAD + TAIL.format(question=question)])[0]
            fact_tokens = count_tokens(tokenizer, facts)
            used = fixed + sum(pool[i].n_tokens + t + 6 for i, t in zip(fact_ids, fact_tokens))
            fillers = []
            for i in rng.sample(range(len(pool)), len(pool)):
                if used >= target:
                    break
                if i in fact_ids or used + pool[i].n_tokens + 6 > target:
                    continue
                fillers.append(i)
                used += pool[i].n_tokens + 6
            docs = [insert_sentence(pool[i], f, rng) for i, f in zip(fact_ids, facts)] + [pool[i].text for i in fillers]
            order = list(range(len(docs)))
            rng.shuffle(order)
            # Drop fillers until the exact token count fits (BPE merges across joins can differ from the sum).
            while True:
                prompt = HEAD + "".join(DOCUMENT.format(i=n + 1, text=docs[k]) for n, k in enumerate(order))
                prompt += TAIL.format(question=question)
                prompt_length = count_tokens(tokenizer, [prompt])[0]
                filler_positions = [n for n, k in enumerate(order) if k > distractor_facts]
                if prompt_length <= budget or not filler_positions:
                    break
                order.pop(filler_positions[-1])
            if prompt_length <= budget:
                break
        else:
            raise ValueError(
                f"cannot fit {distractor_facts + 1} fact passages into max_seq_length={max_seq_length} "
                f"(answer budget {answer_budget}); raise --max-seq-length or lower --max-passage-tokens"
            )
        answer = row_values[0]
        answer_length = count_tokens(tokenizer, [answer])[0]
        if answer_length > answer_budget:
            raise ValueError(f"answer {answer!r} has {answer_length} tokens > --answer-budget={answer_budget}")
        rows.append(
            dict(
                index=row,
                prompt=prompt,
                answer=[answer],
                prompt_length=prompt_length,
                max_answer_length=answer_length,
                total_length=prompt_length + answer_length,
                max_seq_length=max_seq_length,
                task=task,
            )
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("index", pa.int64()),
            ("prompt", pa.string()),
            ("answer", pa.list_(pa.string())),
            ("prompt_length", pa.int64()),
            ("max_answer_length", pa.int64()),
            ("total_length", pa.int64()),
            ("max_seq_length", pa.int64()),
            ("task", pa.string()),
        ]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False), path)


# ----------------------------------------------------------------------------------------------------------------
# CLI


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tokenizer", default=None,
        help="local tokenizer/model folder, or 'tiny' (default: data/demo/model if present, else tiny)",
    )
    parser.add_argument(
        "--corpus", default=str(DEFAULT_CORPUS), help="parquet with a `text` column (default: the bundled corpus)"
    )
    parser.add_argument("--out-dir", default=str(DEFAULT_OUT_DIR))
    parser.add_argument("--name", default="tiny", help="tag in the file names, e.g. the model family (default: tiny)")
    parser.add_argument("--max-seq-length", type=int, default=512, help="prompt_length + answer budget <= this")
    parser.add_argument("--answer-budget", type=int, default=32, help="tokens kept for the answer (max_response_len)")
    parser.add_argument("--min-fill", type=float, default=0.5, help="least fraction of the prompt budget to fill")
    parser.add_argument("--max-passage-tokens", type=int, default=None, help="default: prompt budget // 8, 40..256")
    parser.add_argument("--distractor-facts", type=int, default=1, help="facts about other sections in each prompt")
    parser.add_argument("--train-rows", type=int, default=64)
    parser.add_argument("--val-rows", type=int, default=16, help="0: no val file")
    parser.add_argument("--val-fraction", type=float, default=0.25, help="fraction of corpus sections reserved for val")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--task", default="ruler_synthqa", help="value of the `task` column (data_source)")
    parser.add_argument("--eval-files", nargs="+", default=list(DEFAULT_EVAL_GLOBS), help="files sharing no text")
    parser.add_argument("--min-overlap-words", type=int, default=8, help="shortest shared sentence (words) that counts")
    parser.add_argument("--check", nargs="+", metavar="FILE", help="only check these RULER-format files for overlap")
    args = parser.parse_args(argv)
    budget = args.max_seq_length - args.answer_budget
    if args.answer_budget < 1:
        parser.error(f"--answer-budget must be >= 1, got {args.answer_budget}")
    if budget < 64:
        parser.error(f"--max-seq-length {args.max_seq_length} leaves {budget} prompt tokens; need >= 64")
    if not 0 < args.min_fill <= 1:
        parser.error(f"--min-fill must be in (0, 1], got {args.min_fill}")
    if args.train_rows < 1 or args.val_rows < 0:
        parser.error(f"--train-rows must be >= 1 and --val-rows >= 0, got {args.train_rows}, {args.val_rows}")
    if args.distractor_facts < 0:
        parser.error(f"--distractor-facts must be >= 0, got {args.distractor_facts}")
    if not 0 <= args.val_fraction < 1 or (args.val_rows > 0 and args.val_fraction == 0):
        parser.error(f"--val-fraction must be in (0, 1) when --val-rows > 0, got {args.val_fraction}")
    if args.max_passage_tokens is None:
        args.max_passage_tokens = min(256, max(40, budget // 8))
    return args


def build(args: argparse.Namespace, tokenizer, index: EvalIndex) -> tuple[dict[str, pd.DataFrame], dict[str, list]]:
    """The train (and val) frames for parsed `args`, and the rows that share text with the evaluation files."""
    corpus = Path(args.corpus).resolve()
    if str(corpus) in {str(Path(f).resolve()) for f in index.files}:
        raise ValueError(f"--corpus {corpus} is an evaluation file; build train data from other text")
    passages = make_passages(corpus_sentences(corpus, tokenizer, 8), args.max_passage_tokens, 8)
    shared = index.overlapping({str(i): [p.text] for i, p in enumerate(passages)})
    passages = [p for i, p in enumerate(passages) if str(i) not in shared]
    train_pool, val_pool = split_sections(passages, args.val_fraction if args.val_rows else 0.0, args.seed)
    print(
        f"corpus {corpus.name}: {len(passages)} passages (<= {args.max_passage_tokens} tokens; {len(shared)} dropped "
        "for "
        f"sharing text with {len(index.files)} eval files); train pool {len(train_pool)}, val pool {len(val_pool)}",
        file=sys.stderr,
    )
    common = dict(
        max_seq_length=args.max_seq_length,
        answer_budget=args.answer_budget,
        min_fill=args.min_fill,
        distractor_facts=args.distractor_facts,
        seed=args.seed,
        task=args.task,
    )
    outputs = {"train": build_rows(train_pool, tokenizer, n_rows=args.train_rows, split="train", **common)}
    if args.val_rows:
        outputs["val"] = build_rows(val_pool, tokenizer, n_rows=args.val_rows, split="val", **common)
    texts = {
        f"{split}:{r}": documents_of_prompt(p)
        for split, frame in outputs.items()
        for r, p in enumerate(frame["prompt"])
    }
    return outputs, index.overlapping(texts)


def output_path(args: argparse.Namespace, split: str, n_rows: int) -> Path:
    """`<task>_<name>_<max_seq_length>_<rows>_<split>.parquet`, as the official `ruler_squadqa_lact_4096_1600_train`."""
    return Path(args.out_dir) / f"{args.task}_{args.name}_{args.max_seq_length}_{n_rows}_{split}.parquet"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.check:
        n = check_files(args.check, args.eval_files, args.min_overlap_words)
        print(f"overlap check: {n} row(s) share text with the evaluation files", file=sys.stderr)
        return 1 if n else 0
    index = EvalIndex(eval_files(args.eval_files), args.min_overlap_words)
    tokenizer, tokenizer_name = load_tokenizer(args.tokenizer)
    outputs, overlap = build(args, tokenizer, index)
    if overlap:
        for key, hits in sorted(overlap.items()):
            print(f"OVERLAP {key}: {hits[0][0][:100]!r} also in {hits[0][1]}", file=sys.stderr)
        print(f"error: {len(overlap)} row(s) share text with the evaluation files; nothing written", file=sys.stderr)
        return 1
    for split, frame in outputs.items():
        path = output_path(args, split, len(frame))
        write_parquet(frame, path)
        lengths = frame["prompt_length"]
        print(
            f"wrote {path} ({len(frame)} rows, prompt tokens min {lengths.min()} / median {int(lengths.median())} / "
            f"max {lengths.max()}, tokenizer {tokenizer_name})",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
