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


def test_chance_partners_never_pair_a_rollout_with_its_own_prefix():
    from refine.nsp.rewards import chance_partners

    # rows (document, prefix, copy) in build_rollout_batch order; partner = same copy of the next prefix
    assert chance_partners(2, 3).tolist() == [1, 2, 0, 4, 5, 3]
    assert chance_partners(2, 2, ttt_n=2).tolist() == [2, 3, 0, 1, 6, 7, 4, 5]
    # C = 1: the same prefix of the next document; C = 1 and one document: no partner
    assert chance_partners(3, 1).tolist() == [1, 2, 0]
    assert chance_partners(2, 1, ttt_n=2).tolist() == [2, 3, 0, 1]
    assert chance_partners(1, 1, ttt_n=2).tolist() == [-1, -1]
    for n_docs, n_chunks, ttt_n in [(1, 4, 1), (3, 2, 3), (4, 1, 2)]:
        partners = chance_partners(n_docs, n_chunks, ttt_n)
        rows = torch.arange(n_docs * n_chunks * ttt_n)
        assert (partners // ttt_n != rows // ttt_n).all()  # never its own prefix's ground truth
        assert sorted(partners.tolist()) == rows.tolist()  # a permutation: every ground truth used once


def test_chance_cosine_and_metrics_by_hand():
    from refine.nsp.rewards import chance_cosine, chance_metrics, chance_partners

    response, target, response_ids, target_ids = _example()  # one document, C = 2, k = 2, H = 2
    chance = chance_cosine(response, target, chance_partners(1, 2))
    # row 0 against row 1's targets: cos([1,0],[3,4]) = 0.6, cos([0,1],[1,0]) = 0 -> 0.3
    # row 1 against row 0's targets: cos([3,4],[2,0]) = 0.6, cos([-1,0],[1,0]) = -1 -> -0.2
    torch.testing.assert_close(chance, torch.tensor([0.3, -0.2]))
    cosine = sequence_reward(response, target, response_ids, target_ids, "cosine_similarity")  # [0.5, 0.0]
    metrics = chance_metrics(cosine, chance)
    assert metrics["reward/cs_reward_chance_mean"] == pytest.approx(0.05)
    assert metrics["reward/cs_reward_above_chance_mean"] == pytest.approx(((0.5 - 0.3) + (0.0 + 0.2)) / 2)
    assert all("chance" in key for key in metrics)
    assert torch.isnan(chance_cosine(response[:1], target[:1], torch.tensor([-1]))).all()
    with pytest.raises(ValueError, match="partners"):
        chance_cosine(response, target, torch.tensor([1]))
