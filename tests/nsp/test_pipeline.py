"""The NSP functions composed in the trainer's order, on a context-free toy "model" whose hidden state at a
position is the embedding of the token there: cosine = 1 exactly where the sampled token equals the ground truth,
which checks that target positions, prefixes, responses and rewards line up end to end."""

import torch

from refine.nsp.advantages import grpo_advantages
from refine.nsp.losses import ppo_clip_loss
from refine.nsp.positions import select_positions
from refine.nsp.prefixes import build_rollout_batch, expand_targets, gather_target_hidden
from refine.nsp.rewards import all_sequence_rewards, token_level_rewards


def test_pipeline_alignment_on_context_free_hidden_states():
    gen = torch.Generator().manual_seed(0)
    batch, seq_len, vocab, hidden, k, chunks, ttt_n = 3, 64, 50, 16, 4, 3, 2
    embed = torch.randn(vocab, hidden, generator=gen)
    ids = torch.randint(3, vocab, (batch, seq_len), generator=gen)
    mask = torch.ones(batch, seq_len, dtype=torch.long)
    mask[1, :10] = 0
    ids[mask == 0] = 2
    entropy = torch.rand(batch, seq_len, generator=gen)

    positions = select_positions(entropy, mask, n_chunks=chunks, response_length=k, generator=gen)
    target_hidden = expand_targets(gather_target_hidden(embed[ids], positions, k), ttt_n)
    rollout = build_rollout_batch(ids, mask, positions, response_length=k, pad_token_id=2, ttt_n=ttt_n)
    # "Rollouts": the ground truth with some tokens replaced.
    responses = rollout.ground_truth_ids.clone()
    wrong = torch.rand(responses.shape, generator=gen) < 0.4
    responses[wrong] = (responses[wrong] + 1 - 3) % (vocab - 3) + 3
    rewards = all_sequence_rewards(embed[responses], target_hidden, responses, rollout.ground_truth_ids)

    match = (~wrong).float()
    torch.testing.assert_close(rewards["binary"], match.mean(1))
    # cosine is exactly 1 on matching tokens; a wrong token gives < 1 (random embeddings)
    cosine_tokens = torch.nn.functional.cosine_similarity(embed[responses], target_hidden, dim=-1)
    assert torch.allclose(cosine_tokens[~wrong], torch.ones(int((~wrong).sum())))
    assert (cosine_tokens[wrong] < 0.999).all()
    # the prefix ends right before the ground truth: last prefix token is ids[r - 1]
    for n in range(len(rollout)):
        b, r = int(rollout.source_index[n]), int(rollout.positions[n])
        assert rollout.input_ids[n, -1] == ids[b, r - 1]
        assert torch.equal(rollout.ground_truth_ids[n], ids[b, r:r + k])

    response_mask = torch.ones(len(rollout), k)
    scores = token_level_rewards(rewards["hybrid"], response_mask)
    advantages, _ = grpo_advantages(scores, response_mask, rollout.uid)
    # groups of ttt_n = 2 repeats: the two advantages of a group sum to zero
    torch.testing.assert_close(advantages[0::2, 0] + advantages[1::2, 0], torch.zeros(len(rollout) // 2),
                               atol=1e-5, rtol=0)
    old = torch.randn(len(rollout), k, generator=gen)
    loss, _ = ppo_clip_loss(old, old, advantages, response_mask)
    # ratio 1 everywhere: loss = -mean(advantages)
    torch.testing.assert_close(loss, -advantages.mean())
