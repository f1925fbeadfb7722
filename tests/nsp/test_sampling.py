"""One sampling step of the fast NSP rollouts (`refine.nsp.sampling`), checked by hand on small logit vectors."""

from __future__ import annotations

import math

import pytest
import torch

from refine.nsp.sampling import eos_ids, sample_next, sampling_processors


def draws(logits, processors, n=4000, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return sample_next(logits.expand(n, -1), processors, gen)


def test_eos_is_never_drawn_even_when_it_is_the_most_likely():
    logits = torch.tensor([[0.0, 1.0, 8.0, 0.5]])  # id 2 (EOS) dominates
    tokens = draws(logits, sampling_processors(temperature=1.0, top_k=0, top_p=1.0, suppress_ids=[2]))
    assert not (tokens == 2).any()
    # without suppression the same logits draw EOS almost always: the check above can fail
    assert (draws(logits, sampling_processors(temperature=1.0, top_k=0, top_p=1.0)) == 2).float().mean() > 0.9


def test_temperature_matches_the_softmax_of_scaled_logits():
    logits = torch.tensor([[1.0, 0.0, -1.0]])
    tokens = draws(logits, sampling_processors(temperature=0.5, top_k=0, top_p=1.0), n=20000)
    expected = [math.exp(2 * v) for v in (1.0, 0.0, -1.0)]
    expected = [e / sum(expected) for e in expected]
    observed = [float((tokens == i).float().mean()) for i in range(3)]
    assert observed == pytest.approx(expected, abs=0.015)


def test_top_k_and_top_p_keep_only_their_tokens():
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]]))
    top_k = draws(logits, sampling_processors(temperature=1.0, top_k=2, top_p=1.0))
    assert set(top_k.tolist()) == {0, 1}
    assert float((top_k == 0).float().mean()) == pytest.approx(0.4 / 0.7, abs=0.03)
    # top-p 0.6: the smallest set with mass >= 0.6 is {0, 1} (0.7)
    top_p = draws(logits, sampling_processors(temperature=1.0, top_k=0, top_p=0.6))
    assert set(top_p.tolist()) == {0, 1}


def test_bad_temperature_and_eos_forms():
    with pytest.raises(ValueError, match="temperature"):
        sampling_processors(temperature=0.0, top_k=0, top_p=1.0)
    assert eos_ids(None) == [] and eos_ids(2) == [2] and eos_ids([2, 5]) == [2, 5]
