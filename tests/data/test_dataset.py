"""RawTextDataset = official TTTRLHFDataset behaviour (spec 4.1, Q8-Q10) and its bad-input errors."""

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from refine.data.collate import collate_fn
from refine.data.dataset import RawTextDataset

REPO = Path(__file__).resolve().parents[2]
EOS = 2


def _write_parquet(tmp_path, rows, name="data.parquet"):
    path = tmp_path / name
    pd.DataFrame(rows).to_parquet(path)
    return path


def _qa_rows():
    return {
        "prompt": ["Context: the cat sat.\nQuestion: where?\nAnswer:", "def f(x):\n    return x"],
        "answer": [["on the mat", "mat"], ["x|y"]],
        "task": ["qa", "code"],
    }


def test_left_padding_no_bos_answers_and_data_source(tmp_path, tiny_tokenizer):
    path = _write_parquet(tmp_path, _qa_rows())
    ds = RawTextDataset(path, tiny_tokenizer, prompt_key="prompt", answer_key="answer", data_source_key="task",
                        max_prompt_length=64, max_response_length=8)
    assert len(ds) == 2
    item = ds[0]
    expected = tiny_tokenizer("Context: the cat sat.\nQuestion: where?\nAnswer:", add_special_tokens=False)["input_ids"]
    n = len(expected)
    assert expected[0] != tiny_tokenizer.bos_token_id  # raw text, no BOS
    assert item["input_ids"].tolist() == [EOS] * (64 - n) + expected  # left-padded with pad = EOS
    assert item["attention_mask"].tolist() == [0] * (64 - n) + [1] * n
    assert item["answers"] == "on the mat|mat"
    first = tiny_tokenizer("on the mat", add_special_tokens=False)["input_ids"]
    assert item["ground_truth_ids"].tolist() == first + [EOS] * (8 - len(first))  # right-padded
    assert item["ground_truth_attention_mask"].tolist() == [1] * len(first) + [0] * (8 - len(first))
    assert item["data_source"] == "qa"
    assert ds[1]["answers"] == "x|y"  # joined with "|" (the reward side splits it again, Q10)
    assert set(item) == {"input_ids", "attention_mask", "answers", "ground_truth_ids", "ground_truth_attention_mask",
                         "data_source"}


def test_head_truncation_is_counted_and_warned(tmp_path, tiny_tokenizer, caplog):
    text = "The quick brown fox jumps over the lazy dog. " * 20
    path = _write_parquet(tmp_path, {"text": [text, "short text here"]})
    ds = RawTextDataset(path, tiny_tokenizer, prompt_key="text", max_prompt_length=16)
    full = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    with caplog.at_level(logging.WARNING, logger="refine.data.dataset"):
        item = ds[0]
    assert item["input_ids"].tolist() == full[:16]  # the head is kept, the end is cut
    assert item["attention_mask"].tolist() == [1] * 16
    assert ds.truncated_count == 1 and "keeping the first 16" in caplog.text
    ds[1]
    assert ds.truncated_count == 1
    assert set(ds[1]) == {"input_ids", "attention_mask"}  # no answer / data-source keys configured


def test_filter_overlong_counts_tokens(tmp_path, tiny_tokenizer):
    long_text = "word " * 100
    path = _write_parquet(tmp_path, {"text": ["a b c", long_text, "d e"]})
    assert len(RawTextDataset(path, tiny_tokenizer, prompt_key="text", max_prompt_length=16)) == 3  # off: official
    kept = RawTextDataset(path, tiny_tokenizer, prompt_key="text", max_prompt_length=16, filter_overlong=True)
    assert len(kept) == 2
    assert kept[1]["attention_mask"].sum().item() == len(tiny_tokenizer("d e", add_special_tokens=False)["input_ids"])


def test_json_jsonl_and_multiple_files(tmp_path, tiny_tokenizer):
    rows = [{"prompt": "alpha beta", "answers": ["a"]}, {"prompt": "gamma", "answers": ["b", "c"]}]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    ds = RawTextDataset([tmp_path / "a.json", str(tmp_path / "b.jsonl")], tiny_tokenizer, answer_key="answers",
                        max_prompt_length=8, max_response_length=4)
    assert len(ds) == 4 and ds[3]["answers"] == "b|c"


def test_items_collate_with_verls_collate_fn(tmp_path, tiny_tokenizer):
    from verl.utils.dataset.rl_dataset import collate_fn as verl_collate_fn

    path = _write_parquet(tmp_path, _qa_rows())
    ds = RawTextDataset(path, tiny_tokenizer, answer_key="answer", data_source_key="task", max_prompt_length=32,
                        max_response_length=4)
    batch = verl_collate_fn([ds[0], ds[1]])
    assert batch["input_ids"].shape == (2, 32) and batch["input_ids"].dtype == torch.long
    assert batch["ground_truth_ids"].shape == (2, 4)
    assert isinstance(batch["answers"], np.ndarray) and batch["answers"].dtype == object
    assert batch["data_source"].tolist() == ["qa", "code"]
    assert collate_fn([ds[0], ds[1]]).keys() == batch.keys()


def test_official_ruler_file_row(tiny_tokenizer):
    path = REPO / "data" / "ruler" / "ruler_squadqa_lact_4096_200_test.parquet"
    ds = RawTextDataset(path, tiny_tokenizer, answer_key="answer", data_source_key="task", max_prompt_length=8160,
                        max_response_length=32)
    assert len(ds) == 200
    item = ds[0]
    assert item["input_ids"].shape == (8160,) and item["data_source"] == "ruler_squadqa"
    assert item["input_ids"][item["attention_mask"] == 0].eq(EOS).all()


@pytest.mark.parametrize(
    "rows, kwargs, message",
    [
        ({"text": ["a"]}, dict(prompt_key="prompt"), r"prompt_key='prompt': column not found"),
        ({"prompt": ["a"]}, dict(answer_key="answer", max_response_length=4), r"answer_key='answer': column not found"),
        ({"prompt": ["a"]}, dict(data_source_key="task"), r"data_source_key='task': column not found"),
        ({"prompt": ["ok", "  "]}, {}, r"column 'prompt' row 1: empty document"),
        ({"prompt": ["a"], "answer": ["just a string"]}, dict(answer_key="answer", max_response_length=4),
         r"column 'answer' row 0: expected a list of strings, got str"),
        ({"prompt": ["a"], "answer": [[]]}, dict(answer_key="answer", max_response_length=4),
         r"column 'answer' row 0: empty answer list"),
        ({"prompt": ["a"], "answer": [["x"]]}, dict(answer_key="answer"), r"max_response_length must be an int"),
        ({"prompt": ["a"]}, dict(max_prompt_length=0), r"max_prompt_length must be an int >= 1; got 0"),
        ({"prompt": ["a"]}, dict(max_prompt_length=None), r"max_prompt_length must be an int >= 1; got None"),
    ],
)
def test_bad_input_fails_before_tokenising(tmp_path, rows, kwargs, message):
    class NoTokenizer:  # any tokenisation would fail loudly; the checks must come first
        pad_token_id = None
        eos_token_id = EOS

        def __call__(self, *args, **kwargs):
            raise AssertionError("tokenised before validation")

    path = _write_parquet(tmp_path, rows)
    kwargs = {"max_prompt_length": 16, **kwargs}
    with pytest.raises(ValueError, match=message):
        RawTextDataset(path, NoTokenizer(), **kwargs)


def test_unsupported_file_type(tmp_path, tiny_tokenizer):
    (tmp_path / "x.csv").write_text("prompt\na\n")
    with pytest.raises(ValueError, match=r"data_files: unsupported file type 'x.csv'"):
        RawTextDataset(tmp_path / "x.csv", tiny_tokenizer, max_prompt_length=8)
