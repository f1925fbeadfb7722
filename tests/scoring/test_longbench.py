"""LongBench scorer: hand-computed cases for every metric family, both modes, and bad input."""

import difflib

import pytest

from refine.scoring import longbench as lb

QA_TASKS_CUT_AT_FIRST_NEWLINE = ("narrativeqa", "qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "musique")


# ---------------------------------------------------------------- qa_f1


@pytest.mark.parametrize(
    ("prediction", "gold", "expected"),
    [
        ("The Eiffel Tower!", "eiffel tower", 1.0),  # case, punctuation, article
        ("an apple a day", "apple day", 1.0),  # articles dropped as whole words
        ("anapple", "apple", 0.0),  # ...but not inside words
        ("Paris France", "Paris", 2 / 3),  # p = 1/2, r = 1
        ("U.S.A.", "USA", 1.0),  # ASCII punctuation removed
        ("\u201cParis\u201d", "Paris", 0.0),  # curly quotes are not in string.punctuation
        ("Fécamp", "FÉCAMP", 1.0),  # unicode lower-casing
        ("the the", "the", 0.0),  # both normalise to nothing: zero overlap scores 0
        ("", "Paris", 0.0),
        ("red red blue", "red blue blue", 2 / 3),  # bag overlap {red:1, blue:1} = 2 of 3 each side
    ],
)
def test_qa_f1_hand_cases(prediction, gold, expected):
    assert lb.score(prediction, [gold], "hotpotqa") == pytest.approx(expected)


@pytest.mark.parametrize("task", QA_TASKS_CUT_AT_FIRST_NEWLINE)
def test_refine_cuts_qa_at_first_newline_without_stripping(task):
    assert lb.score("\nParis", ["Paris"], task) == 0.0  # starts with "\n": empty first line
    assert lb.score("I think\nParis", ["Paris"], task) == 0.0  # gold on the second line
    assert lb.score("  Paris  \nfoo", ["Paris"], task) == 1.0
    # upstream LongBench does not cut these tasks: 1 of 3 tokens matches -> p = 1/3, r = 1 -> F1 = 0.5
    assert lb.score("I think\nParis", ["Paris"], task, mode="longbench") == pytest.approx(0.5)
    assert lb.score("\nParis", ["Paris"], task, mode="longbench") == 1.0


def test_triviaqa_left_strips_newlines_then_keeps_first_line_in_both_modes():
    for mode in lb.MODES:
        assert lb.score("\n\nParis\nLondon", ["Paris"], "triviaqa", mode=mode) == 1.0
        assert lb.score("\n\nParis\nLondon", ["London"], "triviaqa", mode=mode) == 0.0


def test_max_over_answers():
    assert lb.score("Paris", ["London", "Paris France"], "narrativeqa") == pytest.approx(2 / 3)


# ---------------------------------------------------------------- ROUGE-L (rouge 1.0.1 semantics)


@pytest.mark.parametrize(
    ("prediction", "gold", "expected"),
    [
        # LCS "alpha gamma" = 2; r = 2/3, p = 2/4 -> F = 2pr/(p+r) = 4/7
        ("alpha beta gamma delta", "alpha gamma epsilon", 4 / 7),
        ("Alpha beta", "alpha beta", 0.5),  # case-sensitive
        # summary-level union LCS over "."-split sentences: {gamma} U {alpha, beta} covers the whole reference
        ("gamma. alpha beta", "alpha beta gamma", 1.0),
        ("gamma alpha beta", "alpha beta gamma", 2 / 3),  # one sentence: plain LCS "alpha beta"
        # unique-word counting (exclusive n-grams): 4 shared of 5 distinct words each side
        ("the cat sat on the mat", "the cat is on the mat", 0.8),
    ],
)
def test_rouge_l_hand_cases(prediction, gold, expected):
    # the package's F has a 1e-8 in the denominator, hence approx
    assert lb.score(prediction, [gold], "gov_report") == pytest.approx(expected, abs=1e-7)


@pytest.mark.parametrize("prediction", ["", "   ", "\n\n", "...", " . . "])
def test_rouge_empty_hypothesis_scores_zero(prediction):
    for task in lb.ROUGE_TASKS:
        for mode in lb.MODES:
            assert lb.score(prediction, ["a reference"], task, mode=mode) == 0.0


def test_rouge_cut_rules():
    # samsum keeps the first line after left-stripping "\n"; the other summarisation tasks keep everything
    assert lb.score("\nalpha beta\ngamma", ["alpha beta"], "samsum") == pytest.approx(1.0, abs=1e-7)
    assert lb.score("alpha beta\ngamma delta", ["alpha beta gamma delta"], "qmsum") == pytest.approx(1.0, abs=1e-7)


# ---------------------------------------------------------------- classification (TREC)


def test_trec_label_list_is_longbench_all_classes():
    assert len(lb.TREC_CLASSES) == len(set(lb.TREC_CLASSES)) == 50
    assert "Lasting time of somethin" in lb.TREC_CLASSES  # upstream spelling kept


@pytest.mark.parametrize(
    ("prediction", "gold", "expected"),
    [
        ("Other location", "Other location", 1.0),
        ("The type is Country, I think", "Country", 1.0),  # label inside text
        ("City or Country", "City", 0.5),  # two labels found
        ("city", "City", 0.0),  # case-sensitive
        ("", "City", 0.0),
        ("Location", "Other location", 0.0),  # not a class name on its own
        ("\nCity\nCountry", "Country", 0.0),  # trec keeps the first line
        ("\nCity\nCountry", "City", 1.0),
    ],
)
def test_classification_hand_cases(prediction, gold, expected):
    for mode in lb.MODES:
        assert lb.score(prediction, [gold], "trec", mode=mode) == expected


def test_classification_keeps_the_upstream_remove_while_iterating_quirk():
    classes = ("New York", "York", "New", "Paris")
    # matches [New York, York, New]; "York" is removed, which makes the loop skip "New": 2 matches left -> 1/2
    assert lb.classification("New York or York or New", "New York", classes) == 0.5
    # with a single sub-label there is nothing to skip: it is removed and the gold label alone scores 1
    assert lb.classification("New York or York", "New York", ("New York", "York", "Paris")) == 1.0
    # order matters: removing "New" (index 0) makes the loop skip "York", which survives -> 1/2
    assert lb.classification("New York", "New York", ("New", "York", "New York")) == 0.5


# ---------------------------------------------------------------- code_sim (fuzzywuzzy on difflib)


def test_fuzzywuzzy_runs_on_difflib():
    assert lb.fuzz.SequenceMatcher is difflib.SequenceMatcher


@pytest.mark.parametrize(
    ("prediction", "gold", "expected"),
    [
        ("# compute the sum\n// note\nx = 1\ny = 2", "x = 1", 1.0),  # comment lines skipped
        ("\n\nx = 1", "x = 1", 1.0),  # leading newlines stripped
        ("x = 1  # set x\nx = 1", "x = 1", 1.0),  # a line with "#" anywhere is skipped
        ("print(`x`)\nz", "z", 1.0),  # backtick lines skipped
        ("abcd", "abce", 0.75),  # difflib ratio 2*3/8
        ("abcdefgh", "aijklmno", 0.12),  # 2*1/16 = 12.5% -> rounds half to even: 12
        ("abcdefgh", "abcijklm", 0.38),  # 2*3/16 = 37.5% -> 38
        ("", "x = 1", 0.0),
    ],
)
def test_code_sim_hand_cases(prediction, gold, expected):
    assert lb.score(prediction, [gold], "lcc") == expected
    assert lb.score(prediction, [gold], "repobench-p", mode="longbench") == expected


def test_code_sim_all_comment_fallback_differs_by_mode():
    response = "# only a comment"
    assert lb.score(response, [response], "lcc") == 1.0  # refine: the whole response
    assert lb.score(response, [response], "lcc", mode="longbench") == 0.0  # upstream: ""
    # refine compares the unmodified response (leading "\n" included): ratio("\n#a", "#a") = 2*2/5 = 80%
    assert lb.score("\n#a", ["#a"], "lcc") == 0.8


# ---------------------------------------------------------------- general


def test_answers_containing_pipe_are_scored_as_given():
    answers = ["a | b", "c"]
    assert lb.score("a | b", answers, "lcc") == 1.0
    assert answers == ["a | b", "c"]


def test_empty_answer_list_scores_zero():
    for task in lb.TASKS:
        assert lb.score("anything", [], task) == 0.0


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("x", ["x"], "hotpot"), "hotpot"),
        (("x", ["x"], "lsht"), "lsht"),  # Chinese task: not supported
        (("x", ["x"], "hotpotqa", "official"), "official"),
        (("x", "x", "hotpotqa"), "answers"),
        (("x", [None], "hotpotqa"), r"answers\[0\]"),
        ((1, ["x"], "hotpotqa"), "prediction"),
    ],
)
def test_bad_input_raises_value_error_naming_it(args, named):
    with pytest.raises(ValueError, match=named):
        lb.score(*args)


def test_odd_text_never_crashes():
    odd = ["", "\n", "\x00\x01", "🙂 ü ß", "." * 100, "# // `", "|" * 10, "word " * 300]
    for task in lb.TASKS:
        for mode in lb.MODES:
            for text in odd:
                value = lb.score(text, [text, "gold"], task, mode=mode)
                assert isinstance(value, float) and 0.0 <= value <= 1.0
