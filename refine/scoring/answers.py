"""The official answer round trip between the dataset and the reward manager (official-behaviour.md §4.1, §4.3, Q10).

The dataset joins the answer list into one string with "|" (a non-tensor field); the reward manager splits it
again on "|" before scoring. Answers that themselves contain "|" come back fragmented (7 lcc rows and 1
multifieldqa_en row of the shipped LongBench files); reproducing the round trip keeps score parity.
"""

from __future__ import annotations

from refine.scoring.inputs import check_answers

ANSWER_SEPARATOR = "|"


def join_answers(answers: list[str]) -> str:
    """Dataset side: the answer list as one "|"-joined string."""
    return ANSWER_SEPARATOR.join(check_answers(answers))


def split_answers(joined: str) -> list[str]:
    """Reward side: the "|"-joined string back to a list (fragments answers that contained "|")."""
    if not isinstance(joined, str):
        raise ValueError(f"joined answers must be a str, got {type(joined).__name__}: {joined!r:.80}")
    return joined.split(ANSWER_SEPARATOR)


def round_trip(answers: list[str]) -> list[str]:
    """What the official reward manager scores against: `split_answers(join_answers(answers))`."""
    return split_answers(join_answers(answers))
