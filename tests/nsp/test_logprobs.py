"""Entropy and response log-probs (verl's functions) against hand formulas."""

import pytest
import torch

from refine.nsp.logprobs import position_entropy, response_log_probs


def test_position_entropy_matches_definition():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [10.0, 0.0, 0.0, 0.0]]])
    ent = position_entropy(logits)
    assert ent.shape == (1, 2)
    assert ent[0, 0].item() == pytest.approx(torch.log(torch.tensor(4.0)).item(), rel=1e-6)  # uniform over 4
    p = torch.softmax(logits[0, 1], 0)
    assert ent[0, 1].item() == pytest.approx(-(p * p.log()).sum().item(), abs=1e-5)


def test_response_log_probs_use_the_k_predicting_positions_and_temperature():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 5)  # S + k = 6, k = 2: positions 3 and 4 predict the two response tokens
    response = torch.tensor([[1, 4], [0, 2]])
    got = response_log_probs(logits, response, temperature=0.5)
    for n in range(2):
        for j in range(2):
            expected = torch.log_softmax(logits[n, 3 + j] / 0.5, 0)[response[n, j]]
            assert got[n, j].item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="temperature"):
        response_log_probs(logits, response, temperature=0.0)
    with pytest.raises(ValueError, match=r"\[N, S \+ k, V\]"):
        response_log_probs(logits[:, :2], response)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_position_entropy_in_chunks_equals_the_whole_tensor_bit_for_bit(dtype):
    """More positions than one chunk (3 x 200 > 256): the chunked computation equals one verl call exactly,
    in the logits' dtype."""
    from verl.utils.torch_functional import entropy_from_logits

    logits = (3 * torch.randn(3, 200, 97, generator=torch.Generator().manual_seed(0))).to(dtype)
    got = position_entropy(logits)
    assert got.dtype == dtype and got.shape == (3, 200)
    assert torch.equal(got, entropy_from_logits(logits))
