"""Reward entry points: one dispatcher on `data_source`, and verl's `custom_reward_function` signature.

`data_source` names:
- "ruler_squadqa", "ruler_hotpotqa" (post-training RULER QA files): `ruler.score(mode="refine")`, as the
  official post-training reward;
- the RULER NIAH task names (`ruler.NIAH_TASKS`, e.g. "niah_single_1", as the offline generator writes them):
  `ruler.score(mode="all")`;
- the 14 LongBench dataset names ("hotpotqa", "lcc", ...): `longbench.score(mode="refine")`.

verl 0.9.1 calls `compute_score(data_source=, solution_str=, ground_truth=, extra_info=, **reward_kwargs)` with the
decoded response (special tokens skipped). The official fork called `compute_score(response=, answers=,
data_source=)`; both spellings are accepted. A str `ground_truth`/`answers` is the official "|"-joined field and
is split back (`split_answers`); a list is scored as given.
"""

from __future__ import annotations

from typing import Any

from refine.scoring import longbench, ruler
from refine.scoring.answers import split_answers
from refine.scoring.inputs import check_answers

# ruler_synthqa: the RULER-style QA sets built from the bundled corpus (scripts/make_ruler_qa_train.py)
RULER_QA_SOURCES = ("ruler_squadqa", "ruler_hotpotqa", "ruler_synthqa")
NIAH_SOURCES = ruler.NIAH_TASKS
DATA_SOURCES = RULER_QA_SOURCES + NIAH_SOURCES + longbench.TASKS


def score_response(data_source: str, response: str, answers: list[str]) -> float:
    """Score one decoded `response` against the gold `answers` list with the scorer chosen by `data_source`."""
    if data_source in RULER_QA_SOURCES:
        return ruler.score(response, answers, mode="refine")
    if data_source in NIAH_SOURCES:
        return ruler.score(response, answers, mode="all")
    if data_source in longbench.TASKS:
        return longbench.score(response, answers, data_source, mode="refine")
    raise ValueError(f"unknown data_source {data_source!r}; expected one of {sorted(DATA_SOURCES)}")


def compute_score(
    data_source: str | None = None,
    solution_str: str | None = None,
    ground_truth: Any = None,
    extra_info: dict | None = None,
    *,
    response: str | None = None,
    answers: Any = None,
    **kwargs: Any,
) -> float:
    """verl `custom_reward_function` entry point (also accepts the official fork's `response=`/`answers=`).

    `extra_info` and extra reward kwargs are accepted and ignored. Returns a float in 0..1.
    """
    text = _one_of(solution_str, response, "solution_str", "response")
    gold = _one_of(ground_truth, answers, "ground_truth", "answers")
    if data_source is None:
        raise ValueError("data_source is required (the column named by data.reward_fn_key)")
    gold_list = split_answers(gold) if isinstance(gold, str) else check_answers(gold, "ground_truth")
    return score_response(data_source, text, gold_list)


def _one_of(verl_value: Any, official_value: Any, verl_name: str, official_name: str) -> Any:
    if verl_value is None and official_value is None:
        raise ValueError(f"one of {verl_name}= (verl) or {official_name}= (official) is required")
    if verl_value is not None and official_value is not None:
        raise ValueError(f"pass only one of {verl_name}= and {official_name}=")
    return verl_value if verl_value is not None else official_value
