"""NSP rewards and reward metrics against hand computations (spec 2.A Step 5, 1.4, Q4)."""

import math

import pytest
import torch

from refine.nsp.rewards import all_sequence_rewards, reward_metrics, sequence_reward, token_level_rewards


def _example():
    # Two rollouts, k = 2, H = 2.
    response = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[3.0, 4.0], [-1.0, 0.0]]])
    target = torch.tensor([[[2.0, 0.0], [1.0, 0.0]], [[3.0, 4.0], [1.0, 0.0]]])
    response_ids = torch.tensor([[5, 6], [8, 9]])
    target_ids = torch.tensor([[5, 7], [8, 9]])
    return response, target, response_ids, target_ids


def test_cosine_binary_hybrid_by_hand():
    args = _example()
    # cos per token: row 0 [1, 0] -> 0.5; row 1 [1, -1] -> 0.
    torch.testing.assert_close(sequence_reward(*args, "cosine_similarity"), torch.tensor([0.5, 0.0]))
    # exact match per token: row 0 [1, 0] -> 0.5; row 1 [1, 1] -> 1.
    torch.testing.assert_close(sequence_reward(*args, "binary"), torch.tensor([0.5, 1.0]))
    # hybrid = per-token sum, mean over k: row 0 (2 + 0) / 2; row 1 (2 + 0) / 2.
    torch.testing.assert_close(sequence_reward(*args, "hybrid"), torch.tensor([1.0, 1.0]))
    assert sequence_reward(*args, "binary").dtype == torch.float32


def test_k1_and_hybrid_range():
    response = torch.tensor([[[1.0, 1.0]], [[-1.0, -1.0]]])
    target = torch.tensor([[[2.0, 2.0]], [[1.0, 1.0]]])
    ids = torch.tensor([[4], [4]])
    torch.testing.assert_close(sequence_reward(response, target, ids, ids, "hybrid"), torch.tensor([2.0, 0.0]))
    torch.testing.assert_close(sequence_reward(response, target, ids, ids + 1, "hybrid"), torch.tensor([1.0, -1.0]))


def test_bf16_hidden_states_are_accepted():
    response, target, response_ids, target_ids = _example()
    got = sequence_reward(response.bfloat16(), target.bfloat16(), response_ids, target_ids, "cosine_similarity")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, torch.tensor([0.5, 0.0]), atol=1e-2, rtol=0)


def test_unknown_kind_and_shapes():
    args = _example()
    with pytest.raises(ValueError, match="kind .* got 'cosine'"):
        sequence_reward(*args, "cosine")
    response, target, response_ids, target_ids = args
    with pytest.raises(ValueError, match=r"\[N, k, H\]"):
        sequence_reward(response, target[:, :1], response_ids, target_ids, "binary")
    with pytest.raises(ValueError, match=r"\[N, k\]"):
        sequence_reward(response, target, response_ids[:, :1], target_ids[:, :1], "binary")


def test_scalar_sits_at_last_response_position():
    rewards = token_level_rewards(torch.tensor([0.25, -1.0]), torch.ones(2, 3))
    assert rewards.tolist() == [[0.0, 0.0, 0.25], [0.0, 0.0, -1.0]]
    # A shorter valid response puts it on its own last valid token.
    assert token_level_rewards(torch.tensor([1.0]), torch.tensor([[1, 1, 0]])).tolist() == [[0.0, 1.0, 0.0]]


def test_reward_metrics_official_keys_unbiased_std():
    values = torch.tensor([1.0, 2.0, 3.0, 4.0])
    metrics = reward_metrics({"cosine_similarity": values, "binary": values * 0, "hybrid": values + 1})
    assert set(metrics) == {
        "reward/cs_reward_mean", "reward/cs_reward_std", "reward/binary_reward_mean", "reward/binary_reward_std",
        "reward/hybrid_reward_mean", "reward/hybrid_reward_std",
    }
    assert metrics["reward/cs_reward_mean"] == pytest.approx(2.5)
    assert metrics["reward/cs_reward_std"] == pytest.approx(math.sqrt(5 / 3))  # unbiased: sum sq dev / (n - 1)
    assert metrics["reward/hybrid_reward_mean"] == pytest.approx(3.5)
    assert metrics["reward/binary_reward_std"] == 0.0
    all_three = all_sequence_rewards(*_example())
    assert set(all_three) == {"cosine_similarity", "binary", "hybrid"}
    torch.testing.assert_close(all_three["hybrid"], all_three["cosine_similarity"] + all_three["binary"])
