"""Fixtures of the trainer tests: composed configs on the shipped demo model and data, tiny sizes, fp32."""

from __future__ import annotations

import pytest

# Small enough for 2 CPU cores: 48-token rows, 2 prefixes of 3 tokens each, 2 documents per step.
FAST_OVERRIDES = [
    "+preset=embedded_demo",
    "data.max_prompt_length=48",
    "data.train_batch_size=2",
    "data.val_batch_size=2",
    "refine.n_chunks=2",
    "refine.response_length=3",
    "refine.mini_batch_size=2",
    "refine.micro_batch_size_per_gpu=2",
    "refine.log_prob_micro_batch_size_per_gpu=2",
    "trainer.val_before_train=false",
    "trainer.test_freq=-1",
    "actor_rollout_ref.actor.optim.lr=1e-3",
]


@pytest.fixture
def compose_config():
    """compose(overrides) -> the composed (unvalidated) config with the fast overrides first."""
    from refine.main import compose

    def make(overrides=(), fast=True):
        return compose((FAST_OVERRIDES if fast else []) + list(overrides))

    return make
