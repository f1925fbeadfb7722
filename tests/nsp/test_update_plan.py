"""Combined-update arithmetic against spec 2.C (worked-number table, Q5, Q21, Q22, Q30)."""

import pytest
import torch

from refine.nsp.update_plan import (
    combined_loss_metrics,
    combined_objective,
    normalized_ppo_mini_batch_rows,
    ntp_only_loss_metrics,
    plan_combined_update,
    plan_ntp_only_update,
)


@pytest.mark.parametrize(
    "world, batch, m, m_ppo, sft_mini, ga_sft, ga_ppo, steps",
    [
        (8, 128, 32, 32, 4, 2, 16, 4),  # mid
        (8, 1024, 16, 16, 2, 1, 8, 64),  # post (inner), batch left at default
        (8, 64, 16, 16, 2, 1, 8, 4),  # post (inner), batch 64
        (4, 8, 4, 8, 1, 1, 4, 2),  # TTT, per validation batch
    ],
)
def test_worked_numbers_of_the_spec_table(world, batch, m, m_ppo, sft_mini, ga_sft, ga_ppo, steps):
    k_chunks, ttt_n, micro = 8, 1, 2
    rows_per_rank = normalized_ppo_mini_batch_rows(m, n_chunks=k_chunks, ttt_n=ttt_n, world_size=world)
    assert rows_per_rank == m_ppo
    seqs = batch // world
    plan = plan_combined_update(seqs, seqs * k_chunks * ttt_n, ppo_mini_batch_rows=rows_per_rank,
                                micro_batch_size=micro, n_chunks=k_chunks, ttt_n=ttt_n,
                                sft_loss_coef=1.0, ppo_loss_coef=0.2)
    assert (plan.sft_mini_batch_seqs, plan.grad_accum_sft, plan.grad_accum_ppo, plan.n_optimizer_steps) == (
        sft_mini, ga_sft, ga_ppo, steps)
    assert plan.micro_batch_size == 2
    assert plan.sft_scale == pytest.approx(1.0 / ga_sft) and plan.ppo_scale == pytest.approx(0.2 / ga_ppo)
    # Each pair's PPO rows are exactly the rollouts of its SFT sequences (sequence-major rows).
    for pair in plan.mini_batches:
        assert (pair.ppo.start, pair.ppo.stop) == (pair.sft.start * k_chunks * ttt_n, pair.sft.stop * k_chunks * ttt_n)
        assert len(pair.ppo_micro) == ga_ppo and all(s.stop - s.start == 2 for s in pair.ppo_micro)
        assert sum(s.stop - s.start for s in pair.sft_micro) == sft_mini
    assert plan.mini_batches[-1].ppo.stop == seqs * k_chunks


def test_ttt_n_and_small_batches():
    # ttt_n = 2, C = 4, one rank: m = 3 sequences -> M_ppo = 24 rows; only 16 rows on the rank -> M = 16.
    plan = plan_combined_update(2, 16, ppo_mini_batch_rows=normalized_ppo_mini_batch_rows(
        3, n_chunks=4, ttt_n=2, world_size=1), micro_batch_size=4, n_chunks=4, ttt_n=2,
        sft_loss_coef=0.5, ppo_loss_coef=1.0)
    assert plan.ppo_mini_batch_rows == 16 and plan.sft_mini_batch_seqs == 2
    assert (plan.micro_batch_size, plan.grad_accum_sft, plan.grad_accum_ppo, plan.n_optimizer_steps) == (4, 1, 4, 1)


def test_scaled_backward_equals_coefficient_weighted_means():
    # Gradient accumulated over the plan's micro-batches == grad of sft_coef * mean(NTP) + ppo_coef * mean(pg)
    # over each mini-batch pair (the official combined objective, spec 2.C step 5).
    torch.manual_seed(0)
    seqs, chunks, ttt_n = 4, 2, 1
    plan = plan_combined_update(seqs, seqs * chunks, ppo_mini_batch_rows=4, micro_batch_size=2, n_chunks=chunks,
                                ttt_n=ttt_n, sft_loss_coef=0.7, ppo_loss_coef=0.3)
    assert plan.n_optimizer_steps == 2 and plan.grad_accum_sft == 1 and plan.grad_accum_ppo == 2
    weight = torch.randn(3, requires_grad=True)
    sft_x, ppo_x = torch.randn(seqs, 3), torch.randn(seqs * chunks, 3)

    def sft_loss(sl):
        return (sft_x[sl] @ weight).pow(2).mean()

    def pg_loss(sl):
        return (ppo_x[sl] @ weight).sin().mean()

    for pair in plan.mini_batches:
        weight.grad = None
        for sl in pair.sft_micro:
            (sft_loss(sl) * plan.sft_scale).backward()
        for sl in pair.ppo_micro:
            (pg_loss(sl) * plan.ppo_scale).backward()
        accumulated = weight.grad.clone()
        weight.grad = None
        sft_terms = [sft_loss(sl) for sl in pair.sft_micro]
        pg_terms = [pg_loss(sl) for sl in pair.ppo_micro]
        reference = 0.7 * torch.stack(sft_terms).mean() + 0.3 * torch.stack(pg_terms).mean()
        (grad,) = torch.autograd.grad(reference, weight)
        torch.testing.assert_close(accumulated, grad)
        torch.testing.assert_close(combined_objective(sft_terms, pg_terms, plan), reference)


def test_logged_losses_scaled_and_raw():
    plan = plan_combined_update(16, 128, ppo_mini_batch_rows=32, micro_batch_size=2, n_chunks=8, ttt_n=1,
                                sft_loss_coef=1.0, ppo_loss_coef=0.2)
    sft_raw = [2.0, 4.0]  # GA_sft = 2 -> scaled 1.0, 2.0
    pg_raw = [torch.tensor(0.8), torch.tensor(-0.8), torch.tensor(1.6)]  # GA_ppo = 16 -> x 0.2 / 16
    metrics = combined_loss_metrics(sft_raw, pg_raw, plan)
    assert metrics["actor/sft_loss_ttt"] == pytest.approx(1.5)
    assert metrics["actor/pg_loss_ttt"] == pytest.approx((0.8 - 0.8 + 1.6) / 3 * 0.2 / 16)
    assert metrics["actor/ntp_loss_raw_ttt"] == pytest.approx(3.0)
    assert metrics["actor/pg_loss_raw_ttt"] == pytest.approx(1.6 / 3)


def test_ntp_only_path_has_no_coefficient():
    plan = plan_ntp_only_update(5, micro_batch_size=2)
    assert plan.micro_batch_size == 2 and plan.grad_accum == 3 and plan.scale == pytest.approx(1 / 3)
    assert [(s.start, s.stop) for s in plan.micro_batches] == [(0, 2), (2, 4), (4, 5)]
    metrics = ntp_only_loss_metrics([3.0, 6.0, 9.0], plan)
    assert metrics == {"actor/sft_loss_ttt": pytest.approx(2.0), "actor/ntp_loss_raw_ttt": pytest.approx(6.0)}
    small = plan_ntp_only_update(1, micro_batch_size=2)
    assert small.micro_batch_size == 1 and small.grad_accum == 1
    assert ntp_only_loss_metrics([1.0], small, key="actor/sft_loss", raw_key="actor/sft_loss_raw") == {
        "actor/sft_loss": 1.0, "actor/sft_loss_raw": 1.0}


def test_strict_divisibility_and_official_divisors():
    common = dict(n_chunks=8, ttt_n=1, sft_loss_coef=1.0, ppo_loss_coef=0.2)
    # 6 sequences = 48 rows with M = 32: a short last mini-batch.
    with pytest.raises(ValueError, match="n_rows=48 is not a multiple of the PPO mini-batch M=32"):
        plan_combined_update(6, 48, ppo_mini_batch_rows=32, micro_batch_size=2, **common)
    loose = plan_combined_update(6, 48, ppo_mini_batch_rows=32, micro_batch_size=2, strict=False, **common)
    # Official: the short second mini-batch (16 rows, 8 micro-batches) keeps the divisor GA_ppo = 16 (Q21).
    assert loose.grad_accum_ppo == 16 and len(loose.mini_batches[1].ppo_micro) == 8
    with pytest.raises(ValueError, match="not a multiple of micro_batch_size=3"):
        plan_combined_update(4, 32, ppo_mini_batch_rows=32, micro_batch_size=3, **common)
    with pytest.raises(ValueError, match="SFT mini-batch 3 is not a multiple of micro_batch_size=2"):
        plan_combined_update(6, 48, ppo_mini_batch_rows=24, micro_batch_size=2, **common)
    with pytest.raises(ValueError, match="empty SFT mini-batch"):
        plan_combined_update(4, 32, ppo_mini_batch_rows=4, micro_batch_size=2, **common)
    with pytest.raises(ValueError, match="n_rows=30 must equal"):
        plan_combined_update(4, 30, ppo_mini_batch_rows=32, micro_batch_size=2, **common)
    with pytest.raises(ValueError, match="micro_batch_size must be an int >= 1; got 0"):
        plan_combined_update(4, 32, ppo_mini_batch_rows=32, micro_batch_size=0, **common)
    with pytest.raises(ValueError, match="= 8 must divide by world_size = 3"):
        normalized_ppo_mini_batch_rows(1, n_chunks=8, ttt_n=1, world_size=3)
