"""The RULER-style QA train set (`scripts/make_ruler_qa_train.py`) and the shipped default files in data/ruler_train."""

import re
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SHIPPED = {
    "train": REPO_ROOT / "data/ruler_train/ruler_synthqa_tiny_512_64_train.parquet",
    "val": REPO_ROOT / "data/ruler_train/ruler_synthqa_tiny_512_16_val.parquet",
}
OFFICIAL = REPO_ROOT / "data/ruler/ruler_squadqa_lact_4096_200_test.parquet"
FACT = re.compile(
    r'The (?P<attr>[a-z\' ]+) of the section "(?P<section>[^"]+)" is (?P<value>[A-Z][a-z]+ [A-Z][a-z]+ \d+)\.'
)
QUESTION = re.compile(r'\nQuestion: What is the (?P<attr>[a-z\' ]+) of the section "(?P<section>[^"]+)"\?\nAnswer:$')


@pytest.fixture(scope="module")
def shipped():
    return {split: pd.read_parquet(path) for split, path in SHIPPED.items()}


def test_schema_equals_the_official_ruler_files():
    official = pq.read_schema(OFFICIAL).remove_metadata()
    for path in SHIPPED.values():
        ours = pq.read_schema(path).remove_metadata()
        assert ours.names == official.names
        assert [f.type for f in ours] == [f.type for f in official], path.name


def test_lengths_are_token_counts_of_the_tiny_tokenizer(shipped, tiny_tokenizer):
    for split, frame in shipped.items():
        counted = [len(ids) for ids in tiny_tokenizer(list(frame["prompt"]), add_special_tokens=False)["input_ids"]]
        assert list(frame["prompt_length"]) == counted, split
        answers = [len(tiny_tokenizer(a[0], add_special_tokens=False)["input_ids"]) for a in frame["answer"]]
        assert list(frame["max_answer_length"]) == answers
        assert (frame["total_length"] == frame["prompt_length"] + frame["max_answer_length"]).all()
        assert (frame["max_seq_length"] == 512).all()
        # The prompt budget is max_seq_length - 32 (the demo's max_response_length), and prompts stay short.
        assert frame["prompt_length"].max() <= 512 - 32 and frame["prompt_length"].min() >= 200
        assert list(frame["index"]) == list(range(len(frame)))
        assert set(frame["task"]) == {"ruler_synthqa"}


def test_prompts_follow_the_ruler_qa_template(shipped):
    official = pd.read_parquet(OFFICIAL, columns=["prompt"])["prompt"][0]
    official_head = official[: official.index("Document 1:\n")]
    official_tail = official[official.rindex("\n\nAnswer the question") : official.rindex("Question: ")]
    for frame in shipped.values():
        for prompt in frame["prompt"]:
            assert prompt.startswith(official_head + "Document 1:\n")
            assert official_tail in prompt and prompt.endswith("\nAnswer:")
            numbers = [int(n) for n in re.findall(r"\nDocument (\d+):\n", prompt)]
            assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= 2


def test_answer_is_in_the_prompt_once_and_answers_the_question(shipped):
    for frame in shipped.values():
        for prompt, answer in zip(frame["prompt"], frame["answer"]):
            assert isinstance(answer, (list, tuple)) or answer.ndim == 1
            assert len(answer) == 1 and isinstance(answer[0], str)
            assert prompt.count(answer[0]) == 1
            question = QUESTION.search(prompt)
            facts = {m["section"]: m for m in FACT.finditer(prompt)}
            assert question and len(facts) >= 2  # the gold fact and at least one distractor
            gold = facts[question["section"]]
            assert gold["value"] == answer[0] and gold["attr"] == question["attr"]
            assert all(m["attr"] == question["attr"] for m in facts.values())


def test_no_text_shared_with_any_evaluation_file(shipped, make_qa, eval_index):
    assert len(eval_index.files) == 22  # 8 RULER + 14 LongBench
    texts = {f"{s}:{r}": make_qa.documents_of_prompt(p) for s, f in shipped.items() for r, p in enumerate(f["prompt"])}
    assert eval_index.overlapping(texts) == {}


def test_train_and_val_use_disjoint_corpus_text(shipped, make_qa):
    def sentences(frame):
        docs = [d for p in frame["prompt"] for d in make_qa.documents_of_prompt(p)]
        return {s for s in make_qa.sentences_of(" ".join(docs), 4) if " of the section " not in s}

    assert sentences(shipped["train"]).isdisjoint(sentences(shipped["val"]))


def test_overlap_check_finds_a_copied_passage(make_qa, tmp_path, shipped):
    # An "evaluation" file that contains one shipped passage (re-wrapped and upper-cased) must be flagged.
    passage = make_qa.documents_of_prompt(shipped["train"]["prompt"][5])[1]
    leaked = "Some other text. " + passage.upper().replace(" ", "\n", 3) + " More text."
    pd.DataFrame({"prompt": [leaked, "unrelated"]}).to_parquet(tmp_path / "leak.parquet")
    clean = ["unrelated words only, nothing from the corpus at all here today."]
    pd.DataFrame({"prompt": clean}).to_parquet(tmp_path / "clean.parquet")
    train = str(SHIPPED["train"])
    assert make_qa.main(["--check", train, "--eval-files", str(tmp_path / "leak.parquet")]) == 1
    assert make_qa.main(["--check", train, "--eval-files", str(tmp_path / "clean.parquet")]) == 0


def test_shipped_files_are_reproducible_and_seed_dependent(make_qa, tiny_tokenizer, eval_index):
    # The documented command (`--tokenizer tiny`, defaults otherwise) rebuilds the shipped files exactly.
    args = make_qa.parse_args(["--tokenizer", "tiny"])
    outputs, overlap = make_qa.build(args, tiny_tokenizer, eval_index)
    assert overlap == {}
    for split, frame in outputs.items():
        assert make_qa.output_path(args, split, len(frame)).name == SHIPPED[split].name
        expected = pd.read_parquet(SHIPPED[split])
        expected["answer"] = expected["answer"].map(list)
        pd.testing.assert_frame_equal(frame, expected, check_dtype=False)
    seed_2 = make_qa.parse_args(["--seed", "2", "--train-rows", "8", "--val-rows", "0"])
    other, _ = make_qa.build(seed_2, tiny_tokenizer, eval_index)
    assert set(other) == {"train"}
    assert list(other["train"]["prompt"]) != list(outputs["train"]["prompt"][:8])


def test_bad_arguments_fail_early(make_qa, eval_index, tiny_tokenizer):
    with pytest.raises(SystemExit):
        make_qa.parse_args(["--max-seq-length", "40"])
    with pytest.raises(SystemExit):
        make_qa.parse_args(["--min-fill", "0"])
    # An evaluation file as the corpus is refused before anything is built.
    args = make_qa.parse_args(["--corpus", eval_index.files[0]])
    with pytest.raises(ValueError, match="evaluation file"):
        make_qa.build(args, tiny_tokenizer, eval_index)
    with pytest.raises(ValueError, match="RULER QA format"):
        make_qa.documents_of_prompt("no documents here")


def test_shipped_files_load_as_post_training_data(shipped, tiny_tokenizer):
    # The trainer's dataset reads them as the official RULER files: no truncation at the smoke max_prompt_length
    # (480 = 512 - 32), the first answer as the SFT target.
    from refine.data.dataset import RawTextDataset

    dataset = RawTextDataset(str(SHIPPED["train"]), tiny_tokenizer, prompt_key="prompt", answer_key="answer",
                             data_source_key="task", max_prompt_length=480, max_response_length=32)
    for index in (0, len(dataset) - 1):
        item = dataset[index]
        row = shipped["train"].iloc[index]
        assert int(item["attention_mask"].sum()) == row["prompt_length"]
        target = item["ground_truth_ids"][item["ground_truth_attention_mask"].bool()].tolist()
        assert tiny_tokenizer.decode(target) == row["answer"][0] and item["data_source"] == "ruler_synthqa"
    assert dataset.truncated_count == 0


def test_the_ruler_scorer_accepts_the_gold_answer_and_rejects_the_distractor(shipped):
    from refine.scoring import ruler

    for prompt, answer in zip(shipped["val"]["prompt"], shipped["val"]["answer"]):
        distractors = [m["value"] for m in FACT.finditer(prompt) if m["value"] != answer[0]]
        assert distractors
        assert ruler.score(f" {answer[0]}\nmore text", list(answer)) == 1.0
        assert all(ruler.score(d, list(answer)) == 0.0 for d in distractors)
