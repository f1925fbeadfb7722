"""NSP-GRPO climbs the reward it is given (issue 22): a learning test of the RL mechanics, in both `refine.nsp_mode`s.

The fast = faithful tests cannot catch an error both modes share (a sign, a log-prob off by one token, an advantage
broadcast); this can. NSP-GRPO alone (`sft_coef=0`) on 2 fixed demo documents (128 tokens, C=4, k=5), with a reward
the policy cannot game (exact match, `binary`) and one GRPO group per prefix (`n_per_prefix=8`), lr 3e-4, one
optimiser step per step, 30 steps on the shipped demo DeltaNet, fp32:
- with the gradient as given (`ppo_coef=1`) the exact-match reward rises far beyond its step-to-step noise while
  the NTP loss stays near its start;
- with the gradient reversed (`ppo_coef=-1`) it does not rise.

The driver step (`faithful_inner_step` / `fast_inner_step`) and every worker RPC run unchanged in-process on a plain
model (`tests/trainer/inprocess_worker.py`); one run goes through Ray end to end (the real trainer, the fast mode).

Thresholds, from the noise measured on this set-up (`ppo_coef=1` runs of both modes, the same 30 steps): the
step-to-step standard deviation of the per-step exact-match mean is 0.044 (fast) and 0.033 (faithful), estimated
as sd(consecutive differences) / sqrt(2), which ignores the slow trend. `start` is the mean of steps 0-4, `end` the
mean of steps 20-29, so the noise of end - start is at most 0.044 * sqrt(1/5 + 1/10) = 0.024 (sigma).
Measured end - start: fast 0.092 -> 0.202 (+0.11), faithful 0.108 -> 0.196 (+0.09), 3.6-4.6 sigma; reversed: fast
0.070 -> 0.032, faithful 0.096 -> 0.030.
- RISE_MIN = 0.06 (about 2.5 sigma): the learning run must rise at least this much;
- FLAT_MAX = 0.025 (1 sigma): the reversed run may not rise more than this;
- NTP_DRIFT_MAX = 0.3: the learning run's raw NTP loss (start 2.55, mean of steps 0-4 about 2.57) ends within
  +0.02 (faithful) and +0.11 (fast) of it, the reversed run's +0.8 and more (it unlearns the documents), so "near
  its start" is within 0.3.
Everything is seeded (model, positions, sampling): the runs are deterministic on one machine.
"""

from __future__ import annotations

import statistics

import pytest

STEPS, START, END = 30, slice(0, 5), slice(20, 30)
RISE_MIN, FLAT_MAX, NTP_DRIFT_MAX = 0.06, 0.025, 0.3
EXACT, NTP = "reward/binary_reward_mean", "actor/ntp_loss_raw_ttt"
N_DOCS, SEQ_LEN = 2, 128


def refine_config(mode: str, ppo_coef: float):
    from refine.preflight.schema import RefineConfig

    return RefineConfig(
        ttt_sft_update=True, ttt_ppo_update=True, n_chunks=4, n_per_prefix=8, response_length=5, temperature=1.0,
        reward="binary", sft_coef=0.0, ppo_coef=ppo_coef, mini_batch_size=N_DOCS, micro_batch_size_per_gpu=N_DOCS,
        log_prob_micro_batch_size_per_gpu=N_DOCS * 4 * 8, nsp_mode=mode)


def start_end(history: list[dict], key: str) -> tuple[float, float]:
    values = [record[key] for record in history]
    return statistics.mean(values[START]), statistics.mean(values[END])


def check_learns(history: list[dict], label: str) -> None:
    start, end = start_end(history, EXACT)
    ntp_start, ntp_end = start_end(history, NTP)
    assert end - start >= RISE_MIN, f"{label}: exact match {start:.3f} -> {end:.3f} did not rise by {RISE_MIN}"
    assert abs(ntp_end - ntp_start) <= NTP_DRIFT_MAX, f"{label}: NTP loss {ntp_start:.3f} -> {ntp_end:.3f}"


@pytest.fixture(scope="module")
def documents():
    from tests.trainer.inprocess_worker import demo_documents

    return demo_documents(N_DOCS, SEQ_LEN)


@pytest.mark.parametrize("mode", ["faithful", "fast"])
def test_nsp_grpo_climbs_exact_match_and_the_reversed_gradient_does_not(documents, mode):
    from tests.trainer.inprocess_worker import nsp_run

    ids, mask, pad = documents
    learning = nsp_run(refine_config(mode, 1.0), ids, mask, pad, steps=STEPS, lr=3e-4)
    check_learns(learning, f"{mode}, ppo_coef=1")
    reversed_run = nsp_run(refine_config(mode, -1.0), ids, mask, pad, steps=STEPS, lr=3e-4)
    start, end = start_end(reversed_run, EXACT)
    assert end - start <= FLAT_MAX, f"{mode}, ppo_coef=-1: exact match {start:.3f} -> {end:.3f} rose"
    assert start_end(learning, EXACT)[1] - end >= 2 * RISE_MIN  # the two arms end far apart
    # both arms start from the same weights, documents and seeds: step 0 (before any update) is the same rollout
    assert learning[0][EXACT] == reversed_run[0][EXACT]


@pytest.mark.slow
def test_nsp_grpo_climbs_exact_match_through_ray(make_trainer, tmp_path, documents):
    """The same learning run through the real trainer and Ray workers (fast mode; the in-process runs above share
    every worker function with it): a training file of the 2 documents, so every step sees the same batch."""
    import pandas as pd

    from refine.preflight.compose import REPO_ROOT

    texts = pd.read_parquet(REPO_ROOT / "data" / "demo" / "midtrain_train.parquet")["text"][:N_DOCS]
    train = tmp_path / "two_docs.parquet"
    pd.DataFrame({"text": list(texts)}).to_parquet(train)
    trainer = make_trainer([
        f"data.train_files={train}", f"data.val_files={train}", f"data.max_prompt_length={SEQ_LEN}",
        f"data.train_batch_size={N_DOCS}", "refine.nsp_mode=fast", "refine.reward=binary", "refine.sft_coef=0",
        "refine.ppo_coef=1", "refine.n_chunks=4", "refine.n_per_prefix=8", "refine.response_length=5",
        f"refine.mini_batch_size={N_DOCS}", f"refine.micro_batch_size_per_gpu={N_DOCS}",
        f"refine.log_prob_micro_batch_size_per_gpu={N_DOCS * 32}", "refine.val_get_loss=false",
        "actor_rollout_ref.actor.optim.lr=3e-4", f"trainer.total_training_steps={STEPS}",
        f"trainer.total_epochs={STEPS}",  # one batch per epoch
        f"trainer.default_local_dir={tmp_path / 'run'}",
    ])
    trainer.fit()
    history = [r for r in trainer.history if "training/global_step" in r]
    assert len(history) == STEPS
    check_learns(history, "Ray, fast, ppo_coef=1")
