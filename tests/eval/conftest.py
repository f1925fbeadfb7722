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


@pytest.fixture(scope="module", autouse=True)
def single_torch_thread():
    """Tiny models run fastest on one thread, and a busy shared CPU makes multi-threaded OpenMP spin (20x slower
    forwards measured); restored afterwards so other test folders keep their setting."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
