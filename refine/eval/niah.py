"""Offline RULER-style needle-in-a-haystack (NIAH) data, built from text shipped in the repository.

lm-eval's RULER tasks download their haystack at run time; this generator needs no network. It follows RULER's
`scripts/data/synthetic/niah.py` (NVIDIA/RULER) and `synthetic.yaml` task settings:

| task            | haystack | key   | value   | keys | values | queries |
|-----------------|----------|-------|---------|------|--------|---------|
| niah_single_1   | noise    | words | numbers | 1    | 1      | 1       |
| niah_single_2   | essay    | words | numbers | 1    | 1      | 1       |
| niah_single_3   | essay    | words | uuids   | 1    | 1      | 1       |
| niah_multikey_1 | essay    | words | numbers | 4    | 1      | 1       |
| niah_multikey_2 | needle   | words | numbers | 1    | 1      | 1       |
| niah_multikey_3 | needle   | uuids | uuids   | 1    | 1      | 1       |
| niah_multivalue | essay    | words | numbers | 1    | 4      | 1       |
| niah_multiquery | essay    | words | numbers | 4    | 1      | 4       |

Differences from RULER, all forced by working offline: the "essay" haystack is the bundled corpus
(`data/corpus/python_docs.parquet`, whitespace-normalised) instead of Paul Graham's essays, sentences are split with
a regular expression instead of nltk, and "words" keys are `word-word` pairs drawn from the corpus vocabulary instead
of wonderwords' adjective-noun lists. The prompt is RULER's NIAH template followed by its answer prefix (the "base"
model template), so a base model continues with the value(s).

Rows use the columns of the shipped RULER files (`data/ruler/`): index, prompt, answer (list[str]), prompt_length,
max_answer_length, total_length, max_seq_length, task. Here `max_answer_length` is the generation budget reserved
for the answer (RULER's `tokens_to_generate`), and every row satisfies `total_length = prompt_length +
max_answer_length <= max_seq_length`. Score with `refine.scoring.ruler.score(prediction, answer, mode="all")`.
"""

from __future__ import annotations

import random
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from refine.scoring.paths import CORPUS_PATH
from refine.scoring.ruler import NIAH_TASKS

COLUMNS = (
    "index", "prompt", "answer", "prompt_length", "max_answer_length", "total_length", "max_seq_length", "task",
)  # fmt: skip
NEEDLE = "One of the special magic {value_type} for {key} is: {value}."
NOISE_SENTENCE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
TEMPLATE = (
    "Some special magic {value_type} are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the {value_type} afterwards.\n{context}\n"
    "What are all the special magic {value_type} for {query} mentioned in the provided text?"
)
ANSWER_PREFIX = " The special magic {value_type} for {query} mentioned in the provided text are"
# RULER's 40 evenly spaced needle depths (percent), sampled without replacement per sample.
DEPTHS = tuple(round(100 * i / 39) for i in range(40))
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"\b[a-z]{3,12}\b")


@dataclass(frozen=True)
class NiahConfig:
    """One RULER NIAH task: haystack kind, needle key/value kinds and counts."""

    haystack: str  # "noise" | "essay" | "needle"
    key_type: str  # "words" | "numbers" | "uuids"
    value_type: str
    num_keys: int = 1
    num_values: int = 1
    num_queries: int = 1


NIAH_CONFIGS = {
    "niah_single_1": NiahConfig("noise", "words", "numbers"),
    "niah_single_2": NiahConfig("essay", "words", "numbers"),
    "niah_single_3": NiahConfig("essay", "words", "uuids"),
    "niah_multikey_1": NiahConfig("essay", "words", "numbers", num_keys=4),
    "niah_multikey_2": NiahConfig("needle", "words", "numbers"),
    "niah_multikey_3": NiahConfig("needle", "uuids", "uuids"),
    "niah_multivalue": NiahConfig("essay", "words", "numbers", num_values=4),
    "niah_multiquery": NiahConfig("essay", "words", "numbers", num_keys=4, num_queries=4),
}
assert tuple(NIAH_CONFIGS) == NIAH_TASKS


@dataclass
class _Needles:
    """Everything random about one sample except the haystack size, so resizing never redraws it."""

    needles: list[str]  # in insertion order (matched to the sorted depths)
    depths: list[float]  # percent, sorted
    answers: list[str]
    query: str
    value_type: str  # plural or singular as RULER's template rewrite makes it
    distractor_seed: int


class Haystack:
    """The shared haystack material: corpus words (essay) and the vocabulary for "words" keys."""

    def __init__(self, texts: Iterable[str]):
        text = re.sub(r"\s+", " ", " ".join(texts)).strip()
        if not text:
            raise ValueError("texts for the NIAH haystack are empty")
        self.words = text.split(" ")
        self.vocabulary = sorted(set(_WORD.findall(text.lower())))
        if len(self.vocabulary) < 10:
            raise ValueError(f"the haystack text has too few distinct words ({len(self.vocabulary)}) for word keys")

    @classmethod
    def from_corpus(cls, path: str | Path = CORPUS_PATH) -> Haystack:
        """The bundled corpus (`text` column of `data/corpus/python_docs.parquet`)."""
        import pyarrow.parquet as pq

        return cls(pq.read_table(path, columns=["text"]).column("text").to_pylist())

    def essay_words(self, count: int) -> list[str]:
        """The first `count` corpus words, repeating the corpus when it is shorter (as RULER repeats its essays)."""
        repeats = -(-count // len(self.words)) if count else 0
        return (self.words * repeats)[:count]

    def draw(self, kind: str, rng: random.Random) -> str:
        """A random needle key or value of `kind`."""
        if kind == "numbers":
            return str(rng.randint(10**6, 10**7 - 1))
        if kind == "words":
            return f"{rng.choice(self.vocabulary)}-{rng.choice(self.vocabulary)}"
        if kind == "uuids":
            return str(uuid.UUID(int=rng.getrandbits(128), version=4))
        raise ValueError(f"unknown needle kind {kind!r}; expected numbers, words or uuids")


def _draw_needles(config: NiahConfig, haystack: Haystack, rng: random.Random, depth_percent: float | None) -> _Needles:
    keys: list[str] = []
    values: list[list[str]] = []
    needles: list[str] = []
    while len(keys) < config.num_keys:
        key = haystack.draw(config.key_type, rng)
        if key in keys:  # distinct keys, so each query has one unambiguous answer set
            continue
        keys.append(key)
        values.append([haystack.draw(config.value_type, rng) for _ in range(config.num_values)])
        needles += [NEEDLE.format(value_type=config.value_type, key=key, value=value) for value in values[-1]]
    rng.shuffle(needles)
    if depth_percent is None:
        depths = sorted(rng.sample(DEPTHS, len(needles)))
    else:
        depths = [float(depth_percent)] * len(needles)
    queried = rng.sample(range(config.num_keys), config.num_queries)
    queries = [keys[i] for i in queried]
    query = queries[0] if len(queries) == 1 else ", ".join(queries[:-1]) + ", and " + queries[-1]
    singular = config.num_queries * config.num_values == 1
    return _Needles(
        needles=needles,
        depths=depths,
        answers=[value for i in queried for value in values[i]],
        query=query,
        value_type=config.value_type[:-1] if singular else config.value_type,
        distractor_seed=rng.getrandbits(64),
    )


def _context(config: NiahConfig, haystack: Haystack, draw: _Needles, size: int) -> str:
    """The haystack of `size` units (essay: words; noise/needle: sentences) with the needles at their depths."""
    if config.haystack == "essay":
        units = _SENTENCE_END.split(" ".join(haystack.essay_words(size))) if size else []
        separator = " "
    elif config.haystack == "noise":
        units = [NOISE_SENTENCE] * size
        separator = "\n"
    elif config.haystack == "needle":
        rng = random.Random(draw.distractor_seed)  # a prefix of one stream: growing `size` keeps earlier lines
        units = []
        while len(units) < size:
            key = haystack.draw(config.key_type, rng)
            if key in draw.query or any(key in needle for needle in draw.needles):
                continue  # a distractor never reuses a real key
            value = haystack.draw(config.value_type, rng)
            units.append(NEEDLE.format(value_type=config.value_type, key=key, value=value))
        separator = "\n"
    else:
        raise ValueError(f"unknown haystack {config.haystack!r}; expected noise, essay or needle")
    positions = [int(len(units) * depth / 100) for depth in draw.depths]
    pieces: list[str] = []
    start = 0
    for position, needle in zip(positions, draw.needles):
        pieces += units[start:position] + [needle]
        start = position
    pieces += units[start:]
    return separator.join(pieces)


def build_prompt(config: NiahConfig, haystack: Haystack, draw: _Needles, size: int) -> str:
    """RULER's NIAH template around the context, followed by the answer prefix."""
    template = TEMPLATE + ANSWER_PREFIX
    if draw.value_type != config.value_type:  # RULER's singular rewrite for one queried value
        template = template.replace("Some", "A").replace("are all", "is").replace("are", "is")
    return template.format(value_type=draw.value_type, query=draw.query, context=_context(config, haystack, draw, size))


def _token_count(tokenizer, text: str) -> int:
    # raw text, no BOS: the official dataset tokenises prompts with add_special_tokens=False (Q9)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _largest_fitting_size(config, haystack, draw, tokenizer, budget: int, start: int) -> int:
    """Largest haystack size whose prompt has at most `budget` tokens (lengths grow with the size).

    Galloping search from `start` (the previous sample's size, which is nearly always within a few units), then
    bisection: a few tokenisations per sample instead of a full binary search.
    """

    def fits(size: int) -> bool:
        return _token_count(tokenizer, build_prompt(config, haystack, draw, size)) <= budget

    if not fits(0):
        raise ValueError(f"max_seq_length leaves no room for a {config} prompt ({budget} prompt tokens available)")
    start = max(start, 0)
    step = 1
    if fits(start):
        low = start
        while fits(low + step):
            low, step = low + step, step * 2
        high = low + step
    else:
        high = start
        while high - step > 0 and not fits(high - step):
            high, step = high - step, step * 2
        low = max(0, high - step)
    while high - low > 1:  # invariant: fits(low), not fits(high)
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return low


def generate_niah(
    tokenizer,
    tasks: Sequence[str] = NIAH_TASKS,
    num_samples: int = 100,
    max_seq_length: int = 4096,
    tokens_to_generate: int = 128,
    seed: int = 42,
    depth_percent: float | None = None,
    haystack: Haystack | None = None,
):
    """NIAH rows (a pandas DataFrame with `COLUMNS`) for `tasks`, each prompt sized to fill `max_seq_length`.

    Every prompt is the longest one (in `tokenizer` tokens, no special tokens) with prompt_length +
    tokens_to_generate <= max_seq_length. Deterministic for (`seed`, task, row index). `depth_percent=None` draws
    RULER's random depths per needle; a number in [0, 100] places every needle at that depth of the haystack.
    """
    import pandas as pd

    unknown = [task for task in tasks if task not in NIAH_CONFIGS]
    if unknown:
        raise ValueError(f"unknown NIAH task(s) {unknown}; expected any of {list(NIAH_TASKS)}")
    for name, value in (("num_samples", num_samples), ("max_seq_length", max_seq_length),
                        ("tokens_to_generate", tokens_to_generate)):  # fmt: skip
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if tokens_to_generate >= max_seq_length:
        raise ValueError(f"tokens_to_generate ({tokens_to_generate}) must be below max_seq_length ({max_seq_length})")
    if depth_percent is not None and not 0 <= depth_percent <= 100:
        raise ValueError(f"depth_percent must be in [0, 100] or None, got {depth_percent!r}")
    haystack = haystack or Haystack.from_corpus()
    budget = max_seq_length - tokens_to_generate
    rows = []
    for task in tasks:
        config = NIAH_CONFIGS[task]
        size = 16
        for index in range(num_samples):
            # str seeds hash deterministically (unlike hash()), independent of PYTHONHASHSEED
            draw = _draw_needles(config, haystack, random.Random(f"{seed}:{task}:{index}"), depth_percent)
            size = _largest_fitting_size(config, haystack, draw, tokenizer, budget, start=size)
            prompt = build_prompt(config, haystack, draw, size)
            prompt_length = _token_count(tokenizer, prompt)
            rows.append({
                "index": index, "prompt": prompt, "answer": list(draw.answers), "prompt_length": prompt_length,
                "max_answer_length": tokens_to_generate, "total_length": prompt_length + tokens_to_generate,
                "max_seq_length": max_seq_length, "task": task,
            })  # fmt: skip
    return pd.DataFrame(rows, columns=list(COLUMNS))


def minimum_max_seq_length(tokenizer, tasks: Sequence[str] = NIAH_TASKS, num_samples: int = 100,
                           tokens_to_generate: int = 128, seed: int = 42, depth_percent: float | None = None,
                           haystack: Haystack | None = None) -> int:
    """The smallest `max_seq_length` `generate_niah` accepts for these arguments: the longest prompt with an empty
    haystack (instruction, needles, question) over the rows it would draw, plus the generation budget."""
    haystack = haystack or Haystack.from_corpus()
    longest = 0
    for task in tasks:
        config = NIAH_CONFIGS[task]
        for index in range(num_samples):
            draw = _draw_needles(config, haystack, random.Random(f"{seed}:{task}:{index}"), depth_percent)
            longest = max(longest, _token_count(tokenizer, build_prompt(config, haystack, draw, 0)))
    return longest + tokens_to_generate


def write_niah_files(frame, out_dir: str | Path, suffix: str = "test") -> list[Path]:
    """One parquet per task, named `{task}_{max_seq_length}_{rows}_{suffix}.parquet` like `data/ruler/`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for (task, length), part in frame.groupby(["task", "max_seq_length"], sort=False):
        path = out_dir / f"{task}_{length}_{len(part)}_{suffix}.parquet"
        part.reset_index(drop=True).to_parquet(path, index=False)
        paths.append(path)
    return paths
