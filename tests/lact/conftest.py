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


# Fast-weight shapes: the shipped configs' square one, plus what upstream also runs: low-rank W0/W2 with a wider
# or narrower hidden size (inter_multi != 1, rectangular 0.5·I), and per-channel rates (lr_dim = fw_head_dim).
FAST_WEIGHT_SHAPES = {
    "square": {},
    "wide_low_rank": {"inter_multi": 2},
    "narrow_low_rank": {"inter_multi": 0.5},
    "per_channel_lr": {"lr_dim": "fw_head_dim"},
}


@pytest.fixture(params=list(FAST_WEIGHT_SHAPES), ids=list(FAST_WEIGHT_SHAPES))
def fw_shape(request):
    """Config overrides of one fast-weight shape ("fw_head_dim" stands for the tiny config's value)."""
    from refine.models.lact import tiny_lact_config

    head_dim = tiny_lact_config().fw_head_dim
    return {k: head_dim if v == "fw_head_dim" else v for k, v in FAST_WEIGHT_SHAPES[request.param].items()}
