"""Fixtures for the LaCT tests: single-threaded torch (the CI machine has 2 shared cores; tiny ops are 10-20x
faster without thread-pool contention), restored after each test."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread_torch():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_model():
    """A float64 tiny LaCT (chunk 16, window 24) for exact-math checks; factory over config overrides."""
    from refine.models.lact import LaCTForCausalLM, tiny_lact_config

    def build(seed: int = 0, **overrides):
        torch.manual_seed(seed)
        return LaCTForCausalLM(tiny_lact_config(**overrides)).double().eval()

    return build
