"""RULER scorer: hand-computed cases for the three modes and bad input."""

import numpy as np
import pytest

from refine.scoring import ruler


@pytest.mark.parametrize(
    ("prediction", "answers", "expected"),
    [
        ("Paris", ["paris"], 1.0),  # case-insensitive
        (" The capital is PARIS, of course", ["Paris"], 1.0),  # substring, not equality
        ("Paris\nLondon", ["London"], 0.0),  # gold on the second line: cut away
        ("\nParis", ["Paris"], 0.0),  # starts with "\n": the first line is empty
        ("Paris\tRome", ["rome"], 1.0),  # tab (control char) -> "\n" after the first-line cut: still a substring
        ("", ["Paris"], 0.0),  # empty prediction
        ("Paris", [], 0.0),  # no gold answers
        ("Fécamp Abbey", ["FÉCAMP"], 1.0),  # unicode lower-casing
        ("William of Volpiano", ["John of Ravenna", "william of volpiano"], 1.0),  # any answer
        ("Rome", ["Paris", "London"], 0.0),
    ],
)
def test_refine_mode_hand_cases(prediction, answers, expected):
    assert ruler.score(prediction, answers) == expected


def test_part_mode_has_no_first_line_cut():
    assert ruler.score("\nParis", ["Paris"], mode="part") == 1.0
    assert ruler.score("foo\nbar", ["BAR"], mode="part") == 1.0
    assert ruler.score("foo\nbar", ["BAR"], mode="refine") == 0.0
    assert ruler.score("foo", ["bar", "baz"], mode="part") == 0.0


def test_all_mode_is_the_fraction_of_answers_found():
    prediction = "The special magic numbers are 1234567 and 7654321."
    assert ruler.score(prediction, ["1234567", "7654321", "1111111"], mode="all") == pytest.approx(2 / 3)
    assert ruler.score(prediction, ["1234567", "7654321"], mode="all") == 1.0
    # the same answers under `part` only need one hit
    assert ruler.score(prediction, ["1234567", "1111111"], mode="part") == 1.0
    assert ruler.score(prediction, ["1234567", "1111111"], mode="all") == 0.5


def test_control_characters_become_newlines_before_matching():
    # "\x01" becomes "\n", which breaks the substring "ab" (matches RULER's postprocess_pred)
    assert ruler.postprocess(" a\x01b ") == "a\nb"
    assert ruler.score("a\x01b", ["ab"], mode="part") == 0.0
    assert ruler.score("a\x01b", ["a\nb"], mode="part") == 1.0


def test_answers_are_not_mutated_and_arrays_are_accepted():
    answers = ["Paris", "paris"]
    ruler.score("paris", answers)
    assert answers == ["Paris", "paris"]
    assert ruler.score("paris", np.array(["Paris"], dtype=object), mode="all") == 1.0
    assert ruler.score("paris", ("Paris",)) == 1.0


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        (dict(prediction="x", answers=["x"], mode="exact"), "exact"),
        (dict(prediction="x", answers="x"), "answers"),
        (dict(prediction="x", answers=["x", 3]), "answers[1]"),
        (dict(prediction=None, answers=["x"]), "prediction"),
        (dict(prediction=b"x", answers=["x"]), "prediction"),
    ],
)
def test_bad_input_raises_value_error_naming_it(kwargs, named):
    with pytest.raises(ValueError, match=named.replace("[", r"\[").replace("]", r"\]")):
        ruler.score(**kwargs)


def test_odd_text_never_crashes():
    for text in ["", "\n\n\n", "\x00\x1f", "   ", "🙂" * 50, "a" * 10_000]:
        for mode in ruler.MODES:
            assert 0.0 <= ruler.score(text, ["a", ""], mode=mode) <= 1.0
