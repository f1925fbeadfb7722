"""select_positions against hand-computed examples of spec 2.A Step 2 (Q16, Q17, Q19, Q27)."""

import math

import pytest
import torch

from refine.nsp.positions import select_positions, smooth_entropy, smoothing_width, validate_nsp_sizes


def _left_padded_mask(batch_lengths, seq_len):
    mask = torch.zeros(len(batch_lengths), seq_len, dtype=torch.long)
    for i, length in enumerate(batch_lengths):
        mask[i, seq_len - length:] = 1
    return mask


def test_smoothing_odd_k_is_centred_zero_padded_average():
    row = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])
    # k = 3 -> width 3, one zero on each side, zeros count in the average.
    expected = torch.tensor([[3 / 3, 6 / 3, 9 / 3, 12 / 3, 9 / 3]])
    assert smoothing_width(3) == 3
    torch.testing.assert_close(smooth_entropy(row, 3), expected)


def test_smoothing_even_k_uses_k_plus_one():
    row = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])
    # k = 4 -> width 5, two zeros on each side.
    expected = torch.tensor([[6 / 5, 10 / 5, 15 / 5, 14 / 5, 12 / 5]])
    assert smoothing_width(4) == 5
    torch.testing.assert_close(smooth_entropy(row, 4), expected)


def test_smoothing_k1_is_identity_and_crosses_pad_region():
    row = torch.tensor([[0.5, 7.0, 1.0]])
    torch.testing.assert_close(smooth_entropy(row, 1), row)
    # The pad region's entropies are averaged in too (the mask is not used).
    torch.testing.assert_close(smooth_entropy(torch.tensor([[9.0, 0.0, 0.0]]), 3)[0, 1], torch.tensor(3.0))


def test_argmax_hand_example_with_clamp():
    # S = 80, 4 pads: start 4, L = 76, C = 2 -> c = 38, chunks [4, 42) and [42, 80). k = 3.
    seq_len, k = 80, 3
    mask = _left_padded_mask([76], seq_len)
    entropy = torch.zeros(1, seq_len)
    entropy[0, 30] = 5.0  # raw peak of chunk 0 -> r = 31
    entropy[0, 10:13] = 4.9  # smoothed (4.9) would beat 30's (5/3); argmax uses the raw entropies
    entropy[0, 70] = 5.0  # peak of chunk 1 -> r = 71 -> clamped to S - 20 = 60
    r = select_positions(entropy, mask, n_chunks=2, response_length=k, mode="argmax")
    assert r.tolist() == [[31, 60]]
    assert r.dtype == torch.long


def test_argmin_and_lower_clamp():
    # No padding, S = L = 60, C = 3 -> c = 20, chunks [0,20), [20,40), [40,60). k = 1: raw entropies.
    seq_len = 60
    mask = torch.ones(1, seq_len, dtype=torch.long)
    entropy = torch.full((1, seq_len), 5.0)
    entropy[0, 3] = 0.0  # r = 4 -> clamped up to start + 20 = 20
    entropy[0, 25] = 0.0  # r = 26
    entropy[0, 45] = 0.0  # r = 46 -> clamped down to 40
    r = select_positions(entropy, mask, n_chunks=3, response_length=1, mode="argmin")
    assert r.tolist() == [[20, 26, 40]]


def test_remainder_tail_belongs_to_no_chunk():
    # L = 77, C = 2 -> c = 38; the last real token (position S - 1) is in no chunk even with the largest score.
    seq_len = 100
    mask = _left_padded_mask([77], seq_len)
    start = seq_len - 77
    entropy = torch.zeros(1, seq_len)
    entropy[0, seq_len - 1] = 100.0
    entropy[0, start + 45] = 1.0  # inside chunk 1 = [start + 38, start + 76)
    entropy[0, start + 30] = 1.0  # inside chunk 0
    r = select_positions(entropy, mask, n_chunks=2, response_length=1, mode="argmax")
    assert r.tolist() == [[start + 31, start + 46]]


def test_entropy_sampling_matches_softmax_of_chunk_scores():
    # S = L = 100, C = 2, k = 1. Chunk 1 = [50, 100): zeros except entropy log(49) at 55, so
    # p(t = 5) = 49 / (49 + 49) = 0.5; r = 56 is inside the clamp range [20, 80].
    seq_len, n_rows = 100, 200
    entropy = torch.zeros(n_rows, seq_len)
    entropy[:, 55] = math.log(49.0)
    mask = torch.ones(n_rows, seq_len, dtype=torch.long)
    gen = torch.Generator().manual_seed(1234)
    r = torch.cat([select_positions(entropy, mask, n_chunks=2, response_length=1, generator=gen)[:, 1]
                   for _ in range(5)])
    assert abs((r == 56).float().mean().item() - 0.5) < 0.05
    # Every other position of the chunk is equally likely: 1/98 each.
    assert abs((r == 60).float().mean().item() - 1 / 98) < 0.02
    uniform = torch.cat([select_positions(entropy, mask, n_chunks=2, response_length=1, mode="uniform",
                                          generator=gen)[:, 1] for _ in range(5)])
    assert abs((uniform == 56).float().mean().item() - 1 / 50) < 0.02
    assert ((uniform >= 51) & (uniform <= 80)).all()


def test_same_seed_same_positions_different_seed_different():
    seq_len = 200
    entropy = torch.rand(4, seq_len, generator=torch.Generator().manual_seed(0))
    mask = _left_padded_mask([200, 150, 120, 60], seq_len)

    def draw(seed):
        return select_positions(entropy, mask, n_chunks=8, response_length=5,
                                generator=torch.Generator().manual_seed(seed))

    assert torch.equal(draw(7), draw(7))
    assert not torch.equal(draw(7), draw(8))
    r = draw(7)
    starts = seq_len - mask.sum(1, keepdim=True)
    assert ((r >= starts + 20) & (r <= seq_len - 20)).all()
    assert select_positions(entropy, mask, n_chunks=8, response_length=5).shape == (4, 8)  # global RNG


def test_short_row_lower_bound_wins_and_ground_truth_fits():
    # L = 26 = 20 + k for k = 6: bounds cross ([start+20, S-20] = [74, 60]); r = start + 20 and r + k = S.
    seq_len = 80
    mask = _left_padded_mask([26], seq_len)
    r = select_positions(torch.rand(1, seq_len), mask, n_chunks=2, response_length=6)
    assert r.tolist() == [[74, 74]]


def test_row_with_too_few_real_tokens_fails_clearly():
    mask = _left_padded_mask([30, 24], 64)
    with pytest.raises(ValueError, match=r"row 1 has 24 real tokens.*at least 20 \+ response_length = 25"):
        select_positions(torch.rand(2, 64), mask, n_chunks=2, response_length=5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_chunks=2, response_length=21), r"response_length.*21"),
        (dict(n_chunks=2, response_length=0), r"response_length.*0"),
        (dict(n_chunks=0, response_length=5), r"n_chunks.*0"),
        (dict(n_chunks=2, response_length=5, mode="topk"), r"mode.*'topk'"),
        (dict(n_chunks=41, response_length=5), r"n_chunks=41 exceeds the 40 real tokens"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        select_positions(torch.rand(1, 40), torch.ones(1, 40, dtype=torch.long), **kwargs)


def test_bad_sizes_and_masks():
    with pytest.raises(ValueError, match=r"max_prompt_length must be >= 20 \+ response_length = 25; got 24"):
        validate_nsp_sizes(max_prompt_length=24, response_length=5, n_chunks=8)
    with pytest.raises(ValueError, match="max_prompt_length"):
        select_positions(torch.rand(1, 24), torch.ones(1, 24, dtype=torch.long), n_chunks=1, response_length=5)
    right_padded = torch.ones(1, 60, dtype=torch.long)
    right_padded[0, -3:] = 0
    with pytest.raises(ValueError, match="row 0 is not left-padded"):
        select_positions(torch.rand(1, 60), right_padded, n_chunks=2, response_length=5)
    with pytest.raises(ValueError, match=r"\[B, S\]"):
        select_positions(torch.rand(1, 60), torch.ones(1, 59, dtype=torch.long), n_chunks=2, response_length=5)


@pytest.mark.parametrize("mode", ["argmax", "argmin"])
def test_batch_rows_with_different_chunk_sizes_match_single_rows(mode):
    # Rows with different L have different c; the batched choice must equal the row-by-row one.
    seq_len = 120
    mask = _left_padded_mask([120, 70, 45], seq_len)
    entropy = torch.rand(3, seq_len, generator=torch.Generator().manual_seed(3))
    entropy[mask == 0] = 50.0  # pad-region scores must never be chosen
    together = select_positions(entropy, mask, n_chunks=4, response_length=4, mode=mode)
    single = torch.cat([select_positions(entropy[i:i + 1], mask[i:i + 1], n_chunks=4, response_length=4, mode=mode)
                        for i in range(3)])
    assert torch.equal(together, single)
    # Independent per-row reference (loop over chunks); argmax / argmin use the raw, unsmoothed entropies.
    smooth = entropy
    for i in range(3):
        length = int(mask[i].sum())
        start, c = seq_len - length, length // 4
        for j in range(4):
            window = smooth[i, start + j * c:start + (j + 1) * c]
            best = window.max() if mode == "argmax" else window.min()
            # every chunk position whose score ties the best (within float error) is an acceptable choice
            allowed = {max(min(start + j * c + t + 1, seq_len - 20), start + 20)
                       for t in range(c) if abs(float(window[t] - best)) < 1e-5}
            assert together[i, j].item() in allowed


def test_micro_batches_sharing_a_generator_draw_the_same_positions():
    seq_len = 200
    mask = _left_padded_mask([200, 150, 120, 60, 90], seq_len)
    entropy = torch.rand(5, seq_len, generator=torch.Generator().manual_seed(2))
    whole = select_positions(entropy, mask, n_chunks=8, response_length=5, generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(1)
    parts = torch.cat([select_positions(entropy[s], mask[s], n_chunks=8, response_length=5, generator=gen)
                       for s in (slice(0, 2), slice(2, 3), slice(3, 5))])
    assert torch.equal(whole, parts)


def test_inverse_cdf_sampler_respects_chunk_sizes_and_probabilities():
    from refine.nsp.positions import _sample_categorical

    # Row 0: chunk of 3 with probabilities (0.2, 0, 0.8) and one masked slot; row 1: chunk of 4, uniform.
    probs = torch.tensor([[[0.2, 0.0, 0.8, 0.0]], [[0.25, 0.25, 0.25, 0.25]]]).repeat(1, 4000, 1)
    sizes = torch.tensor([3, 4])
    got = _sample_categorical(probs, torch.Generator().manual_seed(0), sizes)
    assert got.shape == (2, 4000)
    counts0 = torch.bincount(got[0], minlength=4).float() / 4000
    counts1 = torch.bincount(got[1], minlength=4).float() / 4000
    assert counts0[1] == 0 and counts0[3] == 0
    torch.testing.assert_close(counts0, torch.tensor([0.2, 0.0, 0.8, 0.0]), atol=0.03, rtol=0)
    torch.testing.assert_close(counts1, torch.full((4,), 0.25), atol=0.03, rtol=0)
