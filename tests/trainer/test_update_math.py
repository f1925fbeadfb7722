"""The combined NTP + PPO update of the worker (model_ops), checked on gradients against hand-written losses.

Small fla DeltaNet in fp32 on CPU; the reference losses are written out here from the spec formulas (2.C), not
taken from the code under test.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from refine.worker import model_ops

S, K, C, B = 24, 3, 2, 2


@pytest.fixture(scope="module")
def setup():
    import refine.models  # noqa: F401
    from refine.models.tiny import tiny_deltanet_config
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_deltanet_config()).float()
    model.train()
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 512, (B, S), generator=gen)
    mask = torch.ones(B, S, dtype=torch.long)
    mask[0, :5] = 0
    ids[0, :5] = 2  # pad = EOS, left padding
    n = B * C
    prompts = torch.randint(3, 512, (n, S), generator=gen)
    prompt_mask = torch.ones(n, S, dtype=torch.long)
    prompt_mask[:, :4] = 0
    prompts[:, :4] = 2
    responses = torch.randint(3, 512, (n, K), generator=gen)
    with torch.no_grad():
        logits = model(input_ids=torch.cat([prompts, responses], 1),
                       attention_mask=torch.cat([prompt_mask, torch.ones_like(responses)], 1)).logits
        log_probs = torch.log_softmax(logits[:, S - 1 : S + K - 1].float(), -1)
        current = log_probs.gather(-1, responses.unsqueeze(-1))[..., 0]
    # old log-probs away from the current ones, so some ratios are clipped and the dual clip is reached
    old = current + torch.tensor([[0.5, -0.5, 0.0]] * n) + 0.05 * torch.randn(n, K, generator=gen)
    advantages = torch.tensor([1.0, -1.0, 0.5, -2.0]).unsqueeze(1).expand(n, K).clone()
    sft = {"input_ids": ids, "attention_mask": mask}
    ppo = {"prompts": prompts, "prompt_mask": prompt_mask, "responses": responses, "old_log_probs": old,
           "advantages": advantages}
    return model, sft, ppo


def plan_for(sft_coef, ppo_coef):
    from refine.nsp.update_plan import normalized_ppo_mini_batch_rows, plan_combined_update

    rows = normalized_ppo_mini_batch_rows(B, n_chunks=C, ttt_n=1, world_size=1)
    return plan_combined_update(B, B * C, ppo_mini_batch_rows=rows, micro_batch_size=2, n_chunks=C, ttt_n=1,
                                sft_loss_coef=sft_coef, ppo_loss_coef=ppo_coef)


def combined(model, sft, ppo, sft_coef, ppo_coef, mask_pads=False):
    plan = plan_for(sft_coef, ppo_coef)
    for pair in plan.mini_batches:
        model_ops.combined_backward(model, sft, ppo, pair, plan, temperature=1.0, mask_pads=mask_pads)


def grads_of(model, fn):
    model.zero_grad(set_to_none=True)
    fn()
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in model.parameters()])


def reference_ntp(model, sft, micro):
    """mean CE over every shifted position (pads included: DeltaNet official), per micro-batch / GA."""
    n = sft["input_ids"].shape[0]
    slices = [slice(i, i + micro) for i in range(0, n, micro)]
    for sl in slices:
        ids = sft["input_ids"][sl]
        logits = model(input_ids=ids, attention_mask=sft["attention_mask"][sl]).logits
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        (loss / len(slices)).backward()


def reference_pg(model, ppo, micro, ga, clip=0.2, clip_c=3.0):
    """Dual-clip PPO (spec 2.C) written out: token-mean over the response mask (all ones for NSP rollouts) of each
    micro-batch, / GA."""
    n = ppo["prompts"].shape[0]
    for i in range(0, n, micro):
        sl = slice(i, i + micro)
        resp = ppo["responses"][sl]
        resp_mask = ppo["response_mask"][sl] if "response_mask" in ppo else torch.ones_like(resp)
        logits = model(input_ids=torch.cat([ppo["prompts"][sl], resp], 1),
                       attention_mask=torch.cat([ppo["prompt_mask"][sl], resp_mask], 1)).logits
        logp = torch.log_softmax(logits[:, S - 1 : S + K - 1], -1).gather(-1, resp.unsqueeze(-1))[..., 0]
        adv = ppo["advantages"][sl]
        ratio = torch.exp(torch.clamp(logp - ppo["old_log_probs"][sl], -20, 20))
        clipped = torch.maximum(-adv * ratio, -adv * torch.clamp(ratio, 1 - clip, 1 + clip))
        dual = torch.where(adv < 0, torch.minimum(clipped, -adv * clip_c), clipped)
        ((dual * resp_mask).sum() / resp_mask.sum() / ga).backward()


def test_plan_matches_the_official_arithmetic():
    plan = plan_for(1.0, 1.0)
    # m=2 sequences x C=2 / W=1 -> M=4 rows; SFT mini 2; mu=2; GA_sft=1; GA_ppo=2; one optimiser step
    assert (plan.ppo_mini_batch_rows, plan.sft_mini_batch_seqs, plan.micro_batch_size) == (4, 2, 2)
    assert (plan.grad_accum_sft, plan.grad_accum_ppo, plan.n_optimizer_steps) == (1, 2, 1)


def test_ppo_coef_zero_equals_ntp_only_update(setup):
    from refine.nsp.update_plan import plan_ntp_only_update

    model, sft, ppo = setup
    combined_g = grads_of(model, lambda: combined(model, sft, ppo, 1.0, 0.0))
    ntp_only = grads_of(model, lambda: model_ops.ntp_only_backward(
        model, sft, plan_ntp_only_update(B, micro_batch_size=2), mask_pads=False))
    reference = grads_of(model, lambda: reference_ntp(model, sft, micro=2))
    assert combined_g.abs().sum() > 0
    torch.testing.assert_close(combined_g, reference, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ntp_only, reference, rtol=1e-4, atol=1e-6)


def test_sft_coef_zero_moves_weights_only_through_pg(setup):
    model, sft, ppo = setup
    combined_g = grads_of(model, lambda: combined(model, sft, ppo, 0.0, 1.0))
    reference = grads_of(model, lambda: reference_pg(model, ppo, micro=2, ga=2))
    assert reference.abs().sum() > 0
    torch.testing.assert_close(combined_g, reference, rtol=1e-4, atol=1e-6)


def test_task_pg_backward_is_the_token_mean_over_the_response_mask(setup):
    """Task GRPO (upstream `update_policy`): tokens after a row's EOS are out of the attention and the loss."""
    from refine.nsp.update_plan import micro_slices

    model, _, ppo = setup
    response_mask = torch.ones_like(ppo["responses"])
    response_mask[0, 1:] = 0
    response_mask[3, 2:] = 0
    batch = {**ppo, "response_mask": response_mask}
    task = grads_of(model, lambda: model_ops.task_pg_backward(
        model, batch, micro_slices(0, B * C, 2), scale=0.5, temperature=1.0))
    reference = grads_of(model, lambda: reference_pg(model, batch, micro=2, ga=2))
    assert reference.abs().sum() > 0
    torch.testing.assert_close(task, reference, rtol=1e-4, atol=1e-6)


def test_combined_gradient_is_the_weighted_sum(setup):
    model, sft, ppo = setup
    combined_g = grads_of(model, lambda: combined(model, sft, ppo, 0.7, 0.2))
    ntp = grads_of(model, lambda: reference_ntp(model, sft, micro=2))
    pg = grads_of(model, lambda: reference_pg(model, ppo, micro=2, ga=2))
    torch.testing.assert_close(combined_g, 0.7 * ntp + 0.2 * pg, rtol=1e-4, atol=1e-6)


def test_mask_pads_drops_pad_positions(setup):
    from refine.nsp.update_plan import plan_ntp_only_update

    model, sft, _ = setup
    masked = grads_of(model, lambda: model_ops.ntp_only_backward(
        model, sft, plan_ntp_only_update(B, micro_batch_size=2), mask_pads=True))

    def reference():
        ids, mask = sft["input_ids"], sft["attention_mask"]
        logits = model(input_ids=ids, attention_mask=mask).logits
        keep = mask[:, :-1].bool()  # position i predicts i+1; dropped where token i is a pad
        ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
        (ce[keep.reshape(-1)].mean()).backward()

    torch.testing.assert_close(masked, grads_of(model, reference), rtol=1e-4, atol=1e-6)


def test_task_sft_alone_lowers_the_answer_loss():
    """Task SFT only (no inner loop): the CE on the answer tokens falls over a few optimiser steps."""
    import refine.models  # noqa: F401
    from refine.models.tiny import tiny_deltanet_config
    from transformers import AutoModelForCausalLM

    from refine.nsp.update_plan import plan_ntp_only_update

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_deltanet_config()).float().train()
    gen = torch.Generator().manual_seed(3)
    prompts = torch.randint(3, 512, (4, 16), generator=gen)
    prompt_mask = torch.ones_like(prompts)
    prompt_mask[:2, :4] = 0
    prompts[:2, :4] = 2
    answers = torch.randint(3, 512, (4, 6), generator=gen)
    answer_mask = torch.ones_like(answers)
    answer_mask[1:, 4:] = 0  # right padding of shorter answers
    answers[1:, 4:] = 2
    batch = {"prompts": prompts, "prompt_mask": prompt_mask, "answers": answers, "answer_mask": answer_mask}
    plan = plan_ntp_only_update(4, micro_batch_size=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def answer_ce():
        with torch.no_grad():
            logits = model(input_ids=torch.cat([prompts, answers], 1),
                           attention_mask=torch.cat([prompt_mask, answer_mask], 1)).logits[:, 15:21]
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), answers.reshape(-1), reduction="none")
        return ce[answer_mask.reshape(-1).bool()].mean().item()

    losses = [answer_ce()]
    for _ in range(5):
        optimizer.zero_grad()
        raw = model_ops.task_sft_backward(model, batch, plan)
        assert len(raw) == 2  # two micro-batches of 2, each scaled by 1/GA
        optimizer.step()
        losses.append(answer_ce())
    assert losses[-1] < losses[0] - 0.5, losses
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
