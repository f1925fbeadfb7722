"""RULER scores for one prediction, in 0..1 (never multiplied by 100, never rounded).

Modes:
- `refine` (default, official ReFINE `ruler.py`): keep the text before the first "\\n", strip, replace control
  characters 0x00-0x1F with "\\n", strip again; 1.0 if any gold answer (lower-cased) is a substring of the
  lower-cased response, else 0.0.
- `part` (RULER `string_match_part`, used for RULER QA): RULER's own post-processing (strip, control characters
  to "\\n", strip; no first-line cut), then 1.0 if any gold answer is a case-insensitive substring.
- `all` (RULER `string_match_all`, used for NIAH): same post-processing, then the fraction of gold answers that are
  case-insensitive substrings.
"""

from __future__ import annotations

import re

from refine.scoring.inputs import check_answers, check_choice, check_prediction

MODES = ("refine", "part", "all")
# RULER's needle-in-a-haystack tasks (scored with `all`); the offline generator in `refine.eval.niah` writes them.
NIAH_TASKS = (
    "niah_single_1",
    "niah_single_2",
    "niah_single_3",
    "niah_multikey_1",
    "niah_multikey_2",
    "niah_multikey_3",
    "niah_multivalue",
    "niah_multiquery",
)
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f]")


def postprocess(prediction: str) -> str:
    """RULER's prediction clean-up: strip, control characters to "\\n", strip."""
    return _CONTROL_CHARACTERS.sub("\n", prediction.strip()).strip()


def score(prediction: str, answers: list[str], mode: str = "refine") -> float:
    """Score `prediction` against the gold `answers` (list of str, not mutated) under `mode` (see module doc)."""
    prediction = check_prediction(prediction)
    answers = check_answers(answers)
    check_choice(mode, MODES, "RULER mode")
    if mode == "refine":
        prediction = prediction.split("\n")[0]
    response = postprocess(prediction).lower()
    hits = [1.0 if answer.lower() in response else 0.0 for answer in answers]
    if not hits:
        return 0.0
    if mode == "all":
        return sum(hits) / len(hits)
    return max(hits)
