"""The study's retrieval structure: key -> value pairs planted in documents and queried later (associative recall).

A pair is 5 tokens, `$ K K V V`: a marker, a key of two letters, a value of two digits. It is written once (the
definition) and again later (the query): at the query, the model has seen `$ K K` and must produce `V V`, which
only the definition, `distance` tokens back, can tell it (values are drawn at random per document: there is no
global key -> value mapping to memorise). Every character used here is in no BPE merge of the demo tokenizer, so
each is one token whatever surrounds it, and a document written as text tokenises back to the planted ids.

- pre-training (length L): `plant_augment` overwrites pairs into random windows, definition and query at most L
  apart, so the format is learnt at short distances;
- mid-training (length 4L): text documents of the train split with pairs queried at distances up to 4L;
- post-training: prompts ending in the query `$ K K`, answer `V V` (task SFT), train split;
- evaluation: held-out items from the *test* split (`eval_items`), each one sequence ending in a query, its
  definition at a distance drawn from a distance bin; other pairs (distractors) at the training density.
"""

from __future__ import annotations

import random

MARKER = "$"
KEY_CHARS = "BDEFGHJKLMNOPQRUVWXYZ"   # letters in no merge of data/demo/model's tokenizer
VALUE_CHARS = "0123456789"            # digits, likewise
PAIR_LEN = 5                          # $ K K V V
QUERY_LEN = 3                         # $ K K (the value follows)
DISTRACTOR_EVERY = 64                 # one unqueried pair per this many tokens (evaluation and mid-training)


class Vocab:
    """The planted characters as token ids of `tokenizer` (checked: one token each, in any context)."""

    def __init__(self, tokenizer):
        ids = {c: tokenizer(c, add_special_tokens=False)["input_ids"] for c in MARKER + KEY_CHARS + VALUE_CHARS}
        bad = [c for c, i in ids.items() if len(i) != 1]
        joined = tokenizer("a" + MARKER + KEY_CHARS + VALUE_CHARS + "a", add_special_tokens=False)["input_ids"]
        if bad or len(joined) != 2 + len(ids):
            raise SystemExit(f"repro: the tokenizer merges planted characters {bad or 'in context'}; pick others")
        self.marker = ids[MARKER][0]
        self.keys = [ids[c][0] for c in KEY_CHARS]
        self.values = [ids[c][0] for c in VALUE_CHARS]

    def pair(self, rng: random.Random) -> list[int]:
        return [self.marker, *rng.sample(self.keys, 2), rng.choice(self.values), rng.choice(self.values)]


def _free_slots(length: int, taken: list[tuple[int, int]], size: int, lo: int, hi: int, rng) -> int | None:
    """A start in [lo, hi] for `size` tokens overlapping no interval of `taken` (None after 50 tries)."""
    for _ in range(50):
        start = rng.randint(lo, hi)
        if all(start + size <= a or start >= b for a, b in taken) and start + size <= length:
            return start
    return None


def plant(ids: list[int], vocab: Vocab, rng: random.Random, n_queried: int, n_distractors: int,
          max_distance: int, min_distance: int = PAIR_LEN) -> list[int]:
    """`ids` with `n_queried` pairs written twice (definition, query at most `max_distance` later) and
    `n_distractors` pairs written once, overwriting tokens (same length). Distinct keys within one document."""
    ids, taken, keys = list(ids), [], set()
    n = len(ids)
    for i in range(n_queried + n_distractors):
        pair = vocab.pair(rng)
        while tuple(pair[1:3]) in keys:
            pair = vocab.pair(rng)
        keys.add(tuple(pair[1:3]))
        if i < n_queried:
            first = _free_slots(n, taken, PAIR_LEN, 0, max(0, n - PAIR_LEN - min_distance), rng)
            if first is None:
                continue
            hi = min(n - PAIR_LEN, first + max_distance)
            second = _free_slots(n, taken + [(first, first + PAIR_LEN)], PAIR_LEN, first + min_distance, hi, rng)
            if second is None:
                continue
            for start in (first, second):
                ids[start:start + PAIR_LEN] = pair
                taken.append((start, start + PAIR_LEN))
        else:
            start = _free_slots(n, taken, PAIR_LEN, 0, n - PAIR_LEN, rng)
            if start is not None:
                ids[start:start + PAIR_LEN] = pair
                taken.append((start, start + PAIR_LEN))
    return ids


def plant_augment(vocab: Vocab, pairs_per_window: int):
    """`augment` for build_demo_model.pretrain: every window gets `pairs_per_window` queried pairs (any distance
    that fits the window)."""
    import torch

    def augment(batch, rng):
        rows = [plant(row.tolist(), vocab, rng, pairs_per_window, 0, batch.shape[1]) for row in batch]
        return torch.tensor(rows, dtype=batch.dtype)
    return augment


def planted_documents(tokenizer, texts: list[str], vocab: Vocab, length: int, n_queried: int, seed: int,
                      min_distance: int = PAIR_LEN) -> list[str]:
    """Text documents of <= `length` tokens (train split rows) with queried pairs (definition to query at least
    `min_distance` tokens apart, any longer distance that fits) and distractors."""
    rng = random.Random(seed)
    out = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:length - 8]
        ids = plant(ids, vocab, rng, n_queried, max(1, len(ids) // (2 * DISTRACTOR_EVERY)), len(ids), min_distance)
        doc = tokenizer.decode(ids)
        if len(tokenizer(doc, add_special_tokens=False)["input_ids"]) <= length:
            out.append(doc)
    return out


def _item(stream, vocab, rng, total: int, lo: int, hi: int, tokenizer) -> dict | None:
    """One held-out query: `total` prompt tokens ending in `$ K K`, definition `distance` in [lo, hi) tokens before
    the query's marker; returns None when the text does not tokenise back to the same ids (caller redraws)."""
    start = rng.randrange(0, len(stream) - total)
    ids = list(stream[start:start + total])
    distance = rng.randrange(lo, hi)
    query_at = total - QUERY_LEN
    define_at = query_at - distance
    if define_at < 0:
        return None
    pair = vocab.pair(rng)
    ids[define_at:define_at + PAIR_LEN] = pair
    ids[query_at:] = pair[:QUERY_LEN]
    taken = [(define_at, define_at + PAIR_LEN), (query_at, total)]
    for _ in range(total // DISTRACTOR_EVERY):
        other = vocab.pair(rng)
        if other[1:3] == pair[1:3]:
            continue
        at = _free_slots(total, taken, PAIR_LEN, 0, total - PAIR_LEN, rng)
        if at is not None:
            ids[at:at + PAIR_LEN] = other
            taken.append((at, at + PAIR_LEN))
    text = tokenizer.decode(ids)
    if tokenizer(text, add_special_tokens=False)["input_ids"] != ids:
        return None
    return {"prompt": text, "ids": ids, "answer": tokenizer.decode(pair[QUERY_LEN:]), "answer_ids": pair[QUERY_LEN:],
            "distance": distance}


def eval_items(tokenizer, stream: list[int], vocab: Vocab, bins, per_bin: int, seed: int) -> list[dict]:
    """`per_bin` items per distance bin (lo, hi); every item of a bin is hi + PAIR_LEN tokens long (batchable)."""
    rng = random.Random(seed)
    items = []
    for lo, hi in bins:
        got = 0
        while got < per_bin:
            item = _item(stream, vocab, rng, hi + QUERY_LEN + PAIR_LEN, lo, hi, tokenizer)
            if item is not None:
                items.append({**item, "bin": f"{lo}-{hi}"})
                got += 1
    return items


def qa_frame(items: list[dict]):
    """A trainer parquet frame of items: prompt (text), answer (list), task (a RULER NIAH source: string match)."""
    import pandas as pd

    return pd.DataFrame({"prompt": [i["prompt"] for i in items], "answer": [[i["answer"]] for i in items],
                         "task": ["niah_single_1"] * len(items)})
