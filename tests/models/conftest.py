"""Local fixtures for the model/kernel tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def single_torch_thread():
    """Run these tiny-tensor tests on one intra-op thread: on a loaded 2-core machine, torch's thread pool makes
    small matmuls 10-100x slower than a single thread. The previous setting is restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
