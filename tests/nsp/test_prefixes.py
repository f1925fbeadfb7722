"""build_rollout_batch / target gathers against hand-built rows (spec 2.A Step 2, Q3, Q7)."""

import numpy as np
import pytest
import torch

from refine.nsp.prefixes import build_rollout_batch, expand_targets, gather_target_hidden, gather_target_ids

PAD = 2
ORIG_PAD = 7  # the original row's left-pad id; deliberately != PAD to see that [0, r) is copied as is


def _rows():
    # Row 0: 2 left pads then a..f (10..15). Row 1: no padding, 20..27.
    ids = torch.tensor([[ORIG_PAD, ORIG_PAD, 10, 11, 12, 13, 14, 15], list(range(20, 28))])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1], [1] * 8])
    return ids, mask


def test_prefixes_are_right_aligned_and_targets_follow():
    ids, mask = _rows()
    positions = torch.tensor([[4, 6], [3, 5]])
    out = build_rollout_batch(ids, mask, positions, response_length=2, pad_token_id=PAD)
    o = ORIG_PAD
    assert out.input_ids.tolist() == [
        [PAD, PAD, PAD, PAD, o, o, 10, 11],  # [0, 4) of row 0, original pads included
        [PAD, PAD, o, o, 10, 11, 12, 13],  # [0, 6)
        [PAD, PAD, PAD, PAD, PAD, 20, 21, 22],  # [0, 3) of row 1
        [PAD, PAD, PAD, 20, 21, 22, 23, 24],  # [0, 5)
    ]
    assert out.attention_mask.tolist() == [
        [0, 0, 0, 0, 0, 0, 1, 1],
        [0, 0, 0, 0, 1, 1, 1, 1],
        [0, 0, 0, 0, 0, 1, 1, 1],
        [0, 0, 0, 1, 1, 1, 1, 1],
    ]
    assert out.ground_truth_ids.tolist() == [[12, 13], [14, 15], [23, 24], [25, 26]]
    assert out.positions.tolist() == [4, 6, 3, 5]
    assert out.source_index.tolist() == [0, 0, 1, 1]
    assert out.chunk_index.tolist() == [0, 1, 0, 1]
    # ttt_n = 1: one GRPO group per document (Q3).
    assert isinstance(out.uid, np.ndarray) and out.uid.tolist() == ["0", "0", "1", "1"]
    assert out.input_ids.dtype == ids.dtype and out.attention_mask.dtype == mask.dtype
    assert len(out) == 4


def test_ttt_n_repeats_interleaved_and_groups_per_prefix():
    ids, mask = _rows()
    positions = torch.tensor([[4, 6], [3, 5]])
    out = build_rollout_batch(ids, mask, positions, response_length=2, pad_token_id=PAD, ttt_n=3,
                              source_uids=["docA", "docB"])
    assert len(out) == 2 * 2 * 3
    assert out.positions.tolist() == [4, 4, 4, 6, 6, 6, 3, 3, 3, 5, 5, 5]
    assert out.source_index.tolist() == [0] * 6 + [1] * 6
    assert out.chunk_index.tolist() == [0, 0, 0, 1, 1, 1] * 2
    assert out.ground_truth_ids[:3].tolist() == [[12, 13]] * 3
    single = build_rollout_batch(ids, mask, positions, response_length=2, pad_token_id=PAD)
    assert torch.equal(out.input_ids[::3], single.input_ids) and torch.equal(out.input_ids[1::3], single.input_ids)
    groups = out.uid.tolist()
    assert len(set(groups)) == 4  # one group per prefix
    assert groups[0] == groups[1] == groups[2] != groups[3]
    assert groups[0].startswith("docA") and groups[-1].startswith("docB")


def test_source_uids_are_kept_per_document():
    ids, mask = _rows()
    out = build_rollout_batch(ids, mask, torch.tensor([[4], [5]]), response_length=1, pad_token_id=PAD,
                              source_uids=np.array(["u-0", "u-1"], dtype=object))
    assert out.uid.tolist() == ["u-0", "u-1"]


def test_gathers_match_loop_reference_and_expand_order():
    torch.manual_seed(0)
    batch, seq_len, hidden, k = 2, 30, 4, 3
    states = torch.randn(batch, seq_len, hidden)
    ids = torch.randint(0, 100, (batch, seq_len))
    positions = torch.tensor([[20, 25, 27], [21, 22, 5]])
    got = gather_target_hidden(states, positions, k)
    got_ids = gather_target_ids(ids, positions, k)
    assert got.shape == (batch, 3, k, hidden) and got_ids.shape == (batch, 3, k)
    for b in range(batch):
        for j in range(3):
            r = int(positions[b, j])
            torch.testing.assert_close(got[b, j], states[b, r:r + k], rtol=0, atol=0)
            assert got_ids[b, j].tolist() == ids[b, r:r + k].tolist()
    flat = expand_targets(got, ttt_n=2)
    assert flat.shape == (batch * 3 * 2, k, hidden)
    torch.testing.assert_close(flat[2], got[0, 1], rtol=0, atol=0)  # rows: b0c0, b0c0, b0c1, ...
    torch.testing.assert_close(flat[3], got[0, 1], rtol=0, atol=0)
    # expand_targets of the ids gives build_rollout_batch's ground truth, row for row.
    mask = torch.ones(batch, seq_len, dtype=torch.long)
    out = build_rollout_batch(ids, mask, positions, response_length=k, pad_token_id=PAD, ttt_n=2)
    assert torch.equal(out.ground_truth_ids, expand_targets(got_ids, ttt_n=2))


def test_bad_input():
    ids, mask = _rows()
    with pytest.raises(ValueError, match="positions must lie in"):
        build_rollout_batch(ids, mask, torch.tensor([[7], [4]]), response_length=2, pad_token_id=PAD)
    with pytest.raises(ValueError, match="ttt_n must be an int >= 1; got 0"):
        build_rollout_batch(ids, mask, torch.tensor([[4], [4]]), response_length=2, pad_token_id=PAD, ttt_n=0)
    with pytest.raises(ValueError, match=r"positions must be \[B=2, C\]"):
        build_rollout_batch(ids, mask, torch.tensor([[4]]), response_length=2, pad_token_id=PAD)
    with pytest.raises(ValueError, match="source_uids must have B=2 entries"):
        build_rollout_batch(ids, mask, torch.tensor([[4], [4]]), response_length=2, pad_token_id=PAD, source_uids=["a"])
