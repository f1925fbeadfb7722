"""GRPO advantages over NSP groups (verl's function, spec 2.A Step 6, Q3)."""

import numpy as np
import torch

from refine.nsp.advantages import grpo_advantages
from refine.nsp.prefixes import build_rollout_batch
from refine.nsp.rewards import token_level_rewards


def _advantages(scores, uids, **kwargs):
    k = 3
    mask = torch.ones(len(scores), k)
    adv, returns = grpo_advantages(token_level_rewards(torch.tensor(scores), mask), mask, uids, **kwargs)
    assert torch.equal(adv, returns)
    assert torch.equal(adv, adv[:, :1].expand_as(adv))  # broadcast over the k tokens
    return adv[:, 0]


def test_document_groups_hand_computed():
    scores = [0.2, 0.4, 0.9, 1.0, 3.0]
    uids = np.array(["d0", "d0", "d0", "d1", "d1"], dtype=object)
    got = _advantages(scores, uids)
    g0 = torch.tensor(scores[:3])
    g1 = torch.tensor(scores[3:])
    expected = torch.cat([(g0 - g0.mean()) / (g0.std(unbiased=True) + 1e-6),
                          (g1 - g1.mean()) / (g1.std(unbiased=True) + 1e-6)])
    torch.testing.assert_close(got, expected)
    # Hand value for the pair group: std = sqrt(2), advantages -+1/sqrt(2).
    torch.testing.assert_close(got[3:], torch.tensor([-0.70710678, 0.70710678]), atol=1e-5, rtol=0)


def test_all_equal_group_gives_zero_without_nan_and_singleton():
    got = _advantages([0.7, 0.7, 0.7, 0.3], ["a", "a", "a", "solo"])
    assert not torch.isnan(got).any()
    torch.testing.assert_close(got[:3], torch.zeros(3))
    # singleton group: mean 0, std 1 -> score / (1 + eps)
    torch.testing.assert_close(got[3], torch.tensor(0.3 / (1 + 1e-6)))


def test_no_std_normalisation_switch():
    got = _advantages([1.0, 2.0, 6.0], ["g", "g", "g"], norm_adv_by_std_in_grpo=False)
    torch.testing.assert_close(got, torch.tensor([-2.0, -1.0, 3.0]))


def test_grouping_follows_rollout_batch_uids():
    ids = torch.arange(60).view(2, 30)
    mask = torch.ones(2, 30, dtype=torch.long)
    positions = torch.tensor([[20, 22], [21, 24]])
    # ttt_n = 1: the 2 prefixes of each document form one group.
    docs = build_rollout_batch(ids, mask, positions, response_length=2, pad_token_id=0)
    got = _advantages([1.0, 3.0, 5.0, 5.0], docs.uid)
    torch.testing.assert_close(got, torch.tensor([-0.70710678, 0.70710678, 0.0, 0.0]), atol=1e-5, rtol=0)
    # ttt_n = 2: each prefix's two rollouts form one group.
    per_prefix = build_rollout_batch(ids, mask, positions, response_length=2, pad_token_id=0, ttt_n=2)
    got = _advantages([0.0, 2.0, 1.0, 1.0, 4.0, 0.0, 3.0, 3.0], per_prefix.uid)
    torch.testing.assert_close(got, torch.tensor([-0.70710678, 0.70710678, 0, 0, 0.70710678, -0.70710678, 0, 0]),
                               atol=1e-5, rtol=0)
