"""NTP loss (pad-mask switch, Q6) and the dual-clip PPO loss (verl's vanilla vs the official formula, spec 2.C)."""

import math

import pytest
import torch

from refine.nsp.losses import ntp_labels, ntp_loss, ppo_clip_loss


def _ntp_case():
    torch.manual_seed(0)
    batch, seq_len, vocab = 2, 7, 11
    logits = torch.randn(batch, seq_len, vocab)
    ids = torch.randint(3, vocab, (batch, seq_len))
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [1] * 7])
    ids[mask == 0] = 2  # pad = EOS
    return logits, ids, mask


def _token_ce(logits, ids, b, i):
    """-log p(ids[b, i + 1] | logits[b, i]), computed by hand."""
    row = logits[b, i]
    return (torch.logsumexp(row, 0) - row[ids[b, i + 1]]).item()


def test_ntp_loss_matches_hand_reference_both_modes():
    logits, ids, mask = _ntp_case()
    seq_len = ids.shape[1]
    # DeltaNet-official (stock fla): every shifted position counts, pads included.
    all_terms = [_token_ce(logits, ids, b, i) for b in range(2) for i in range(seq_len - 1)]
    got_off = ntp_loss(logits, ids, mask, mask_pad_in_ntp=False)
    assert got_off.item() == pytest.approx(sum(all_terms) / len(all_terms), rel=1e-6)
    # LaCT-official: position i dropped where mask[i] == 0 (after the shift): row 0 keeps i = 3, 4, 5 only, so the
    # last pad (i = 2), which predicts the first real token, is dropped too.
    kept = [_token_ce(logits, ids, 0, i) for i in (3, 4, 5)] + [_token_ce(logits, ids, 1, i) for i in range(6)]
    got_on = ntp_loss(logits, ids, mask, mask_pad_in_ntp=True)
    assert got_on.item() == pytest.approx(sum(kept) / len(kept), rel=1e-6)


def test_mask_switch_changes_loss_exactly_by_pad_positions():
    logits, ids, mask = _ntp_case()
    n_all = 2 * (ids.shape[1] - 1)
    pad_positions = [(b, i) for b in range(2) for i in range(ids.shape[1] - 1) if mask[b, i] == 0]
    assert pad_positions == [(0, 0), (0, 1), (0, 2)]
    pad_sum = sum(_token_ce(logits, ids, b, i) for b, i in pad_positions)
    off = ntp_loss(logits, ids, mask, mask_pad_in_ntp=False).item() * n_all
    on = ntp_loss(logits, ids, mask, mask_pad_in_ntp=True).item() * (n_all - len(pad_positions))
    assert off - on == pytest.approx(pad_sum, rel=1e-5)
    # No padding: the switch changes nothing.
    full = torch.ones_like(mask)
    torch.testing.assert_close(ntp_loss(logits, ids, full, mask_pad_in_ntp=True),
                               ntp_loss(logits, ids, full, mask_pad_in_ntp=False))


def test_ntp_labels_for_models_that_shift_inside():
    logits, ids, mask = _ntp_case()
    labels = ntp_labels(ids, mask, mask_pad_in_ntp=True)
    # Label i + 1 is ignored where mask[i] == 0: row 0 columns 1, 2, 3 (column 3 = first real token).
    assert (labels[0] == -100).nonzero().flatten().tolist() == [1, 2, 3]
    assert torch.equal(ntp_labels(ids, mask, mask_pad_in_ntp=False), ids)
    # The in-model shift of fla/HF (label i + 1 at logit i, last logit unused) gives the same loss.
    shifted = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1)
    in_model = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), shifted.reshape(-1))
    torch.testing.assert_close(in_model, ntp_loss(logits, ids, mask, mask_pad_in_ntp=True))


def test_ntp_loss_bad_shapes():
    logits, ids, mask = _ntp_case()
    with pytest.raises(ValueError, match=r"\[B, S, V\]"):
        ntp_loss(logits[:, :-1], ids, mask, mask_pad_in_ntp=True)


def _official_dual_clip(old, new, adv, mask, clip=0.2, c=3.0):
    """The official (verl 0.5.0 compute_policy_loss) formula, written out token by token."""
    total, count = 0.0, 0
    for o, n, a, m in zip(old.flatten().tolist(), new.flatten().tolist(), adv.flatten().tolist(),
                          mask.flatten().tolist()):
        if not m:
            continue
        ratio = math.exp(max(-20.0, min(20.0, n - o)))
        loss = max(-a * ratio, -a * min(max(ratio, 1 - clip), 1 + clip))
        if a < 0:
            loss = min(loss, -a * c)
        total += loss
        count += 1
    return total / count


def test_ppo_clip_loss_matches_official_formula_on_hand_cases():
    # Tokens: unclipped; clipped above (A > 0); clipped below (A < 0); dual clip (A < 0, ratio e^2 > 3);
    # ratio clamp at +20; ratio clamp at -20; and one masked-out token that must not count.
    log_diff = torch.tensor([[math.log(1.1), math.log(1.5), math.log(0.5), 2.0], [30.0, -30.0, 5.0, 0.0]])
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0], [-1.0, 1.0, 1.0, 2.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 1]], dtype=torch.float32)
    old = torch.full_like(log_diff, -2.0)
    new = old + log_diff
    loss, metrics = ppo_clip_loss(old, new, adv, mask)
    hand = [-1.1, -1.2, 0.8, 3.0, 3.0, -math.exp(-20.0), -2.0]  # by hand, same order (masked token skipped)
    assert loss.item() == pytest.approx(sum(hand) / len(hand), rel=1e-5)
    assert loss.item() == pytest.approx(_official_dual_clip(old, new, adv, mask), rel=1e-5)
    assert set(metrics) == {"actor/pg_clipfrac_ttt", "actor/ppo_kl_ttt", "actor/pg_clipfrac_lower_ttt"}
    # clipfrac: tokens where the clipped term is the larger one: 1.5 (A>0), 0.5 (A<0), e^2 (A<0)... by hand:
    # token 1 (-1.2 > -1.5), token 2 (0.8 > 0.5) -> 2 of 7; dual-clip lower: tokens 3 and 4 -> 2 of 7.
    assert metrics["actor/pg_clipfrac_ttt"] == pytest.approx(2 / 7)
    assert metrics["actor/pg_clipfrac_lower_ttt"] == pytest.approx(2 / 7)


def test_ppo_clip_loss_random_against_official_formula_and_gradient():
    gen = torch.Generator().manual_seed(5)
    old = torch.randn(6, 5, generator=gen)
    new = (old + 0.5 * torch.randn(6, 5, generator=gen)).requires_grad_()
    adv = torch.randn(6, 5, generator=gen)
    mask = torch.ones(6, 5)
    loss, _ = ppo_clip_loss(old, new, adv, mask, metric_suffix="")
    assert loss.item() == pytest.approx(_official_dual_clip(old, new.detach(), adv, mask), rel=1e-5)
    loss.backward()
    assert new.grad is not None and torch.isfinite(new.grad).all()
