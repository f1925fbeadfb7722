"""Offline NIAH generator: layout, sizing, determinism, needle depth, and scoring of a perfect prediction."""

import re

import pandas as pd
import pytest

from refine.eval import niah
from refine.scoring import ruler
from refine.scoring.paths import RULER_DIR


def test_columns_match_the_shipped_ruler_files(niah_frame, tmp_path):
    shipped = pd.read_parquet(RULER_DIR / "ruler_squadqa_lact_4096_200_test.parquet")
    paths = niah.write_niah_files(niah_frame, tmp_path)
    assert sorted(p.name for p in paths) == sorted(f"{task}_768_3_test.parquet" for task in niah.NIAH_TASKS)
    back = pd.read_parquet(paths[0])
    assert list(back.columns) == list(shipped.columns)
    assert dict(back.dtypes) == dict(shipped.dtypes)
    assert all(isinstance(a, str) for a in back["answer"].iloc[0])


def test_prompts_fill_the_length_budget(niah_frame, tiny_tokenizer):
    budget = 768 - 16
    for row in niah_frame.itertuples():
        length = len(tiny_tokenizer(row.prompt, add_special_tokens=False)["input_ids"])
        assert length == row.prompt_length <= budget
        assert row.total_length == row.prompt_length + row.max_answer_length <= row.max_seq_length == 768
    # largest fitting haystack: one more noise sentence (+ "\n") would not fit
    sentence = len(tiny_tokenizer("\n" + niah.NOISE_SENTENCE, add_special_tokens=False)["input_ids"])
    single = niah_frame[niah_frame.task == "niah_single_1"]
    assert (single.prompt_length > budget - sentence - 2).all()


def test_answers_needles_and_queries(niah_frame):
    counts = {"niah_multivalue": 4, "niah_multiquery": 4}
    for row in niah_frame.itertuples():
        answers = list(row.answer)
        assert len(answers) == counts.get(row.task, 1)
        config = niah.NIAH_CONFIGS[row.task]
        question = row.prompt.rsplit("\n", 1)[1]
        for value in answers:
            # each value sits in exactly one needle, whose key is asked about in the question
            found = re.findall(rf"One of the special magic {config.value_type} for (\S+) is: {re.escape(value)}\.",
                               row.prompt)
            assert len(found) == 1 and found[0] in question, (row.task, value)
            assert row.prompt.count(f"for {found[0]} is:") == config.num_values


def test_prediction_equal_to_the_needle_value_scores_one(niah_frame):
    for row in niah_frame.itertuples():
        answers = list(row.answer)
        assert ruler.score(" " + ", ".join(answers) + ".", answers, mode="all") == 1.0
        if len(answers) == 4:
            assert ruler.score(answers[0], answers, mode="all") == 0.25
        assert ruler.score("no idea", answers, mode="all") == 0.0


def test_deterministic_for_a_seed(niah_frame, tiny_tokenizer, haystack):
    again = niah.generate_niah(tiny_tokenizer, num_samples=3, max_seq_length=768, tokens_to_generate=16, seed=7,
                               haystack=haystack)
    pd.testing.assert_frame_equal(again, niah_frame)
    other = niah.generate_niah(tiny_tokenizer, tasks=["niah_single_1"], num_samples=3, max_seq_length=384,
                               tokens_to_generate=16, seed=8, haystack=haystack)
    assert list(other.prompt) != list(niah_frame[niah_frame.task == "niah_single_1"].prompt)
    # samples differ from each other within a file
    assert niah_frame.prompt.nunique() == len(niah_frame)


@pytest.mark.parametrize("depth", [0, 25, 50, 90, 100])
def test_needle_at_the_requested_depth_noise_haystack(tiny_tokenizer, haystack, depth):
    frame = niah.generate_niah(tiny_tokenizer, tasks=["niah_single_1"], num_samples=2, max_seq_length=512,
                               tokens_to_generate=8, depth_percent=depth, haystack=haystack)
    for prompt in frame.prompt:
        context = prompt.split("\n")[1:-1]  # header line, context lines, question line
        needle_at = [i for i, line in enumerate(context) if line.startswith("One of the special magic")]
        noise = len(context) - 1
        assert len(needle_at) == 1 and noise > 4
        assert needle_at[0] == int(noise * depth / 100)


@pytest.mark.parametrize("depth", [10, 50, 80])
def test_needle_at_the_requested_depth_essay_haystack(tiny_tokenizer, haystack, depth):
    frame = niah.generate_niah(tiny_tokenizer, tasks=["niah_single_2", "niah_multivalue"], num_samples=1,
                               max_seq_length=1024, tokens_to_generate=8, depth_percent=depth, haystack=haystack)
    for task, prompt in zip(frame.task, frame.prompt):
        context = prompt.split("\n")[1]
        first = context.index("One of the special magic")
        sentences_before = len(re.split(r"(?<=[.!?])\s+", context[:first].strip())) if first else 0
        total = len(re.split(r"(?<=[.!?])\s+", re.sub(r"One of the special magic [^.]*\.\s*", "", context)))
        assert sentences_before == int(total * depth / 100)
        # all needles of a multi-value sample are adjacent at that depth
        needles = niah.NIAH_CONFIGS[task].num_values
        assert re.search(r"(One of the special magic numbers for \S+ is: \d+\.\s*){%d}" % needles, context)


def test_random_depths_come_from_rulers_grid():
    assert niah.DEPTHS[0] == 0 and niah.DEPTHS[-1] == 100 and len(niah.DEPTHS) == 40
    assert niah.DEPTHS[1] == 3 and niah.DEPTHS[20] == 51  # round(100 * i / 39)


def test_singular_template_only_for_one_queried_value(niah_frame):
    single = niah_frame[niah_frame.task == "niah_single_3"].prompt.iloc[0]
    assert single.startswith("A special magic uuid is hidden") and single.endswith("provided text is")
    multi = niah_frame[niah_frame.task == "niah_multivalue"].prompt.iloc[0]
    assert multi.startswith("Some special magic numbers are hidden") and multi.endswith("provided text are")
    query = niah_frame[niah_frame.task == "niah_multiquery"].prompt.iloc[0].rsplit("\n", 1)[1]
    # the question and the answer prefix both name the 4 keys as "k1, k2, k3, and k4"
    assert query.count(", ") == 6 and query.count(", and ") == 2


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        (dict(tasks=["niah_single_9"]), "niah_single_9"),
        (dict(max_seq_length=64, tokens_to_generate=64), "tokens_to_generate"),
        (dict(depth_percent=120), "depth_percent"),
        (dict(num_samples=0), "num_samples"),
        (dict(max_seq_length=40, tokens_to_generate=8), "max_seq_length"),
    ],
)
def test_bad_arguments(tiny_tokenizer, haystack, kwargs, named):
    with pytest.raises(ValueError, match=named):
        niah.generate_niah(tiny_tokenizer, haystack=haystack, **{"num_samples": 1, **kwargs})
