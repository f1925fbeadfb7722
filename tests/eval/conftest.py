"""Fixtures for the evaluation tests: a small NIAH frame built with the tiny tokenizer."""

import pytest


@pytest.fixture(scope="module")
def haystack():
    from refine.eval.niah import Haystack

    return Haystack.from_corpus()


@pytest.fixture(scope="module")
def niah_frame(tiny_tokenizer, haystack):
    from refine.eval.niah import generate_niah

    return generate_niah(tiny_tokenizer, num_samples=3, max_seq_length=768, tokens_to_generate=16, seed=7,
                         haystack=haystack)
