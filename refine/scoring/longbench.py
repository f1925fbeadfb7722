"""LongBench scores for one prediction, in 0..1 (max over the gold answers; never ×100, never rounded).

Two modes:
- `refine` (default): the official ReFINE `longbench.py` (official-behaviour.md §4.5, Q14):
  trec / triviaqa / samsum keep the first line after left-stripping "\\n"; the summarisation and code tasks are not
  cut; every other QA task keeps the text before the first "\\n" *without* stripping first (a response starting
  with "\\n" scores 0). qa_f1, ROUGE-L and classification strip the response; code_sim falls back to the whole
  response when every line is a comment.
- `longbench`: upstream THUDM/LongBench `eval.py` + `metrics.py`: only trec / triviaqa / samsum are cut (same
  rule), nothing is stripped, and code_sim falls back to "" when every line is a comment.

The metric libraries are the ones LongBench uses, pinned: `rouge==1.0.1` (ROUGE-L F, summary-level union LCS,
sentences split on ".", whitespace tokens, case-sensitive) and `fuzzywuzzy==0.18.0` running on difflib (no
python-Levenshtein: `fuzz.ratio` is then difflib's ratio ×100 rounded half-to-even to an integer).
"""

from __future__ import annotations

import re
import string
import warnings
from collections import Counter
from collections.abc import Callable

from refine.scoring.inputs import check_answers, check_choice, check_prediction

with warnings.catch_warnings():
    # fuzzywuzzy warns that python-Levenshtein is absent; difflib is exactly what we want (the official setup).
    warnings.simplefilter("ignore", UserWarning)
    from fuzzywuzzy import fuzz

MODES = ("refine", "longbench")

# The 50 TREC fine class names as LongBench's trec `all_classes` (and the official ReFINE list) spell them,
# including the upstream truncation "Lasting time of somethin".
TREC_CLASSES = (
    "Food", "Date", "Order, rank", "Speed", "Disease and medicine", "Word with a special property",
    "Abbreviation", "Language", "Letter like a-z", "Other entity", "Animal", "Expression abbreviated", "Price",
    "Techniques and method", "Musical instrument", "Mountain", "Currency name", "Event", "Product", "State",
    "Individual", "Organ of body", "Reason", "Manner of an action", "City", "Religion",
    "Invention, book and other creative piece", "Distance, linear measure", "Temperature",
    "Postcode or other code", "Size, area and volume", "Sport", "Country", "Other location",
    "Lasting time of somethin", "Equivalent term", "Description of something", "Weight", "Vehicle", "Color",
    "Other number", "Definition of something", "Element and substance", "Description of a person",
    "Symbols and sign", "Number of something", "Plant", "Percent, fraction", "Group or organization of person",
    "Title of a person",
)  # fmt: skip

QA_F1_TASKS = ("narrativeqa", "qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "musique", "triviaqa")
ROUGE_TASKS = ("gov_report", "qmsum", "multi_news", "samsum")
CLASSIFICATION_TASKS = ("trec",)
CODE_SIM_TASKS = ("lcc", "repobench-p")
TASKS = QA_F1_TASKS + ROUGE_TASKS + CLASSIFICATION_TASKS + CODE_SIM_TASKS
TASK_METRIC = {
    **{task: "qa_f1" for task in QA_F1_TASKS},
    **{task: "rouge_l" for task in ROUGE_TASKS},
    **{task: "classification" for task in CLASSIFICATION_TASKS},
    **{task: "code_sim" for task in CODE_SIM_TASKS},
}

_FIRST_LINE_TASKS = ("trec", "triviaqa", "samsum")  # cut in both modes (LongBench also lists the Chinese lsht)
_UNCUT_TASKS = ROUGE_TASKS + CODE_SIM_TASKS  # refine mode: no cut; every other task: text before the first "\n"
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)
_rouge = None  # one Rouge instance, built on first use (as the official scorer caches it)


def normalize_answer(text: str) -> str:
    """SQuAD-style normalisation: lower-case, drop ASCII punctuation, drop whole-word a/an/the, collapse spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def qa_f1(prediction: str, gold: str) -> float:
    """Token-bag F1 between the normalised strings (0 when nothing overlaps)."""
    predicted = normalize_answer(prediction).split()
    reference = normalize_answer(gold).split()
    same = sum((Counter(predicted) & Counter(reference)).values())
    if same == 0:
        return 0.0
    precision = same / len(predicted)
    recall = same / len(reference)
    return 2 * precision * recall / (precision + recall)


def rouge_l(prediction: str, gold: str) -> float:
    """ROUGE-L F of the `rouge` 1.0.1 package (`get_scores(avg=True)["rouge-l"]["f"]`); 0 on any exception.

    The package raises on an empty hypothesis or reference and can exceed the recursion limit on very long
    sentences; LongBench's bare `except` turns every such case into 0, and so do we.
    """
    global _rouge
    if _rouge is None:
        from rouge import Rouge

        _rouge = Rouge()
    try:
        return float(_rouge.get_scores([prediction], [gold], avg=True)["rouge-l"]["f"])
    except Exception:  # noqa: BLE001 - any failure of the package scores 0, as upstream
        return 0.0


def classification(prediction: str, gold: str, classes: tuple[str, ...] = TREC_CLASSES) -> float:
    """LongBench classification score: 1/len(matches) if the gold label is among the class names found in the text.

    Class names that are substrings of the gold label (but not equal to it) are dropped from the matches while the
    list is being iterated, which skips the element after each removal: that upstream quirk is kept on purpose.
    """
    matches = [name for name in classes if name in prediction]
    for name in matches:  # mutating while iterating: reproduces upstream's skipped elements
        if name in gold and name != gold:
            matches.remove(name)
    return 1.0 / len(matches) if gold in matches else 0.0


def code_sim(prediction: str, gold: str, fallback_to_response: bool = True) -> float:
    """fuzz.ratio / 100 between the first code line (no "`", "#" or "//") and the gold line.

    With no such line, `fallback_to_response=True` (official ReFINE) compares the whole, unmodified response;
    False (upstream LongBench) compares "".
    """
    line = prediction if fallback_to_response else ""
    for candidate in prediction.lstrip("\n").split("\n"):
        if "`" not in candidate and "#" not in candidate and "//" not in candidate:
            line = candidate
            break
    return fuzz.ratio(line, gold) / 100


def preprocess(prediction: str, task: str, mode: str = "refine") -> str:
    """The per-task response cut applied before the metric (see module doc)."""
    if task in _FIRST_LINE_TASKS:
        return prediction.lstrip("\n").split("\n")[0]
    if mode == "refine" and task not in _UNCUT_TASKS:
        return prediction.split("\n")[0]
    return prediction


def score(prediction: str, answers: list[str], task: str, mode: str = "refine") -> float:
    """Score one LongBench prediction for `task` (one of `TASKS`) under `mode` ("refine" or "longbench").

    Returns the max over `answers` (0.0 for an empty list). `answers` is read, never mutated.
    """
    prediction = check_prediction(prediction)
    answers = check_answers(answers)
    check_choice(task, TASKS, "LongBench task")
    check_choice(mode, MODES, "LongBench mode")
    metric = TASK_METRIC[task]
    response = preprocess(prediction, task, mode)
    if mode == "refine" and metric != "code_sim":
        response = response.strip()
    scorer = _metric_function(metric, mode)
    return max((float(scorer(response, gold)) for gold in answers), default=0.0)


def _metric_function(metric: str, mode: str) -> Callable[[str, str], float]:
    if metric == "qa_f1":
        return qa_f1
    if metric == "rouge_l":
        return rouge_l
    if metric == "classification":
        return classification
    return lambda prediction, gold: code_sim(prediction, gold, fallback_to_response=(mode == "refine"))
