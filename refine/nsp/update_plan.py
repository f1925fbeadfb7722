"""The inner update's arithmetic of one rank (spec 2.A Step 7, 2.C, Q5, Q21, Q22, Q30), and the micro-batch slicer.

Naming: `sft` here is the official name of the NTP part of the inner update (`ttt_sft_loss_coef`,
`actor/sft_loss_ttt`); the outer task SFT on gold answers is always called `task_sft`.

Per rank the update sees B/W sequences (`sft` part) and their B*C*n/W rollout rows (`ppo` part, sequence-major).
With m = `ttt_ppo_mini_batch_size` (global, in sequences):

    M_ppo = m * C * n / W                 rows per PPO mini-batch (`normalized_ppo_mini_batch_rows`)
    M     = min(#rows, M_ppo)
    SFT mini = M // C // n                sequences, so SFT and PPO mini-batches stay sequence-aligned
    mu    = min(M, ttt_ppo_micro_batch_size_per_gpu)   micro-batch of both parts
    GA_sft = max(1, SFT mini // mu),  GA_ppo = M // mu

For each (SFT mini, PPO mini) pair in order: zero grads, backprop NTP * sft_coef / GA_sft per SFT micro-batch and
pg * ppo_coef / GA_ppo per PPO micro-batch, then one optimizer step. The logged `actor/sft_loss_ttt` and
`actor/pg_loss_ttt` are the mean over micro-batches of those *scaled* values (Q5); we also log the raw means.
The NTP-only path (`update_policy_sft_ttt`, also the shape of the outer task SFT) uses loss / GA with no
coefficient (Q22) and one optimizer step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


def micro_slices(start: int, stop: int, size: int) -> tuple[slice, ...]:
    """Consecutive slices of `size` rows over [start, stop); the last one may be short (as DataProto.split).

    The one slicer of every mini- and micro-batch loop (update plans, forwards, `generate`)."""
    return tuple(slice(i, min(i + size, stop)) for i in range(start, stop, size))


def _positive_int(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an int >= 1; got {value!r}")
    return value


def normalized_ppo_mini_batch_rows(
    ttt_ppo_mini_batch_size: int, *, n_chunks: int, ttt_n: int, world_size: int
) -> int:
    """M_ppo = m * C * n / W: the per-rank PPO mini-batch in rollout rows (no sequence parallelism: every rank
    is a data-parallel rank).

    ValueError if it is not a whole number >= 1 (the official integer division would silently drop rows, Q30).
    """
    for name, value in (("ttt_ppo_mini_batch_size", ttt_ppo_mini_batch_size), ("n_chunks", n_chunks),
                        ("ttt_n", ttt_n), ("world_size", world_size)):
        _positive_int(name, value)
    rows = ttt_ppo_mini_batch_size * n_chunks * ttt_n
    if rows % world_size != 0:
        raise ValueError(
            f"ttt_ppo_mini_batch_size * n_chunks * ttt_n = {rows} must divide by world_size = {world_size}"
        )
    return rows // world_size


@dataclass(frozen=True)
class MiniBatchPair:
    """One optimizer step: the SFT sequences and PPO rows it covers, and their micro-batches (absolute slices)."""

    sft: slice
    ppo: slice
    sft_micro: tuple[slice, ...]
    ppo_micro: tuple[slice, ...]


@dataclass(frozen=True)
class CombinedUpdatePlan:
    """Sizes, loss scales and the mini/micro-batch schedule of one combined TTT update on one rank."""

    ppo_mini_batch_rows: int  # M
    sft_mini_batch_seqs: int  # M // C // n
    micro_batch_size: int  # mu
    grad_accum_sft: int
    grad_accum_ppo: int
    sft_loss_coef: float
    ppo_loss_coef: float
    mini_batches: tuple[MiniBatchPair, ...]

    @property
    def sft_scale(self) -> float:
        """Factor on each SFT micro-batch's raw NTP loss before backward: sft_coef / GA_sft."""
        return self.sft_loss_coef / self.grad_accum_sft

    @property
    def ppo_scale(self) -> float:
        """Factor on each PPO micro-batch's raw pg loss before backward: ppo_coef / GA_ppo."""
        return self.ppo_loss_coef / self.grad_accum_ppo

    @property
    def n_optimizer_steps(self) -> int:
        return len(self.mini_batches)


def plan_combined_update(
    n_sequences: int,
    n_rows: int,
    *,
    ppo_mini_batch_rows: int,
    micro_batch_size: int,
    n_chunks: int,
    ttt_n: int,
    sft_loss_coef: float,
    ppo_loss_coef: float,
    strict: bool = True,
) -> CombinedUpdatePlan:
    """The official `update_policy_ppo_ttt` schedule for one rank (see the module docstring).

    Args:
        n_sequences: documents on this rank (B / W).
        n_rows: rollout rows on this rank; must be n_sequences * n_chunks * ttt_n.
        ppo_mini_batch_rows: M_ppo from `normalized_ppo_mini_batch_rows`.
        micro_batch_size: `ttt_ppo_micro_batch_size_per_gpu`.
        strict: raise ValueError where the official arithmetic would over- or under-count micro-batches (Q21):
            #rows not a multiple of M, M not a multiple of mu, SFT mini neither < mu nor a multiple of mu.
            `strict=False` reproduces the official divisors as they are.
    """
    for name, value in (("n_sequences", n_sequences), ("n_rows", n_rows), ("ppo_mini_batch_rows", ppo_mini_batch_rows),
                        ("micro_batch_size", micro_batch_size), ("n_chunks", n_chunks), ("ttt_n", ttt_n)):
        _positive_int(name, value)
    if n_rows != n_sequences * n_chunks * ttt_n:
        raise ValueError(
            f"n_rows={n_rows} must equal n_sequences * n_chunks * ttt_n = {n_sequences * n_chunks * ttt_n}"
        )
    mini_rows = min(n_rows, ppo_mini_batch_rows)
    sft_mini = mini_rows // n_chunks // ttt_n
    if sft_mini < 1:
        raise ValueError(
            f"ppo_mini_batch_rows={ppo_mini_batch_rows} gives an empty SFT mini-batch (needs >= n_chunks * ttt_n = "
            f"{n_chunks * ttt_n} rows)"
        )
    micro = min(mini_rows, micro_batch_size)
    if strict:
        if n_rows % mini_rows:
            raise ValueError(f"n_rows={n_rows} is not a multiple of the PPO mini-batch M={mini_rows}")
        if mini_rows % micro:
            raise ValueError(f"PPO mini-batch M={mini_rows} is not a multiple of micro_batch_size={micro}")
        if sft_mini > micro and sft_mini % micro:
            raise ValueError(f"SFT mini-batch {sft_mini} is not a multiple of micro_batch_size={micro}")
    sft_minis = micro_slices(0, n_sequences, sft_mini)
    ppo_minis = micro_slices(0, n_rows, mini_rows)
    pairs = tuple(
        MiniBatchPair(sft=s, ppo=p, sft_micro=micro_slices(s.start, s.stop, micro),
                      ppo_micro=micro_slices(p.start, p.stop, micro))
        for s, p in zip(sft_minis, ppo_minis)
    )
    return CombinedUpdatePlan(
        ppo_mini_batch_rows=mini_rows,
        sft_mini_batch_seqs=sft_mini,
        micro_batch_size=micro,
        grad_accum_sft=max(1, sft_mini // micro),
        grad_accum_ppo=mini_rows // micro,
        sft_loss_coef=float(sft_loss_coef),
        ppo_loss_coef=float(ppo_loss_coef),
        mini_batches=pairs,
    )


@dataclass(frozen=True)
class NtpOnlyPlan:
    """NTP-only update (`update_policy_sft_ttt`, and the outer task SFT): loss / GA, one optimizer step."""

    micro_batch_size: int
    grad_accum: int
    micro_batches: tuple[slice, ...]

    @property
    def scale(self) -> float:
        """Factor on each micro-batch's raw loss: 1 / GA (no `ttt_sft_loss_coef`, Q22)."""
        return 1.0 / self.grad_accum


def plan_ntp_only_update(n_sequences: int, *, micro_batch_size: int) -> NtpOnlyPlan:
    """mu = min(n, micro); GA = number of micro-batches; all of them feed one optimizer step."""
    _positive_int("n_sequences", n_sequences)
    _positive_int("micro_batch_size", micro_batch_size)
    micro = min(n_sequences, micro_batch_size)
    slices = micro_slices(0, n_sequences, micro)
    return NtpOnlyPlan(micro_batch_size=micro, grad_accum=len(slices), micro_batches=slices)


def _as_floats(values: Sequence) -> list[float]:
    return [float(v.detach().item()) if isinstance(v, torch.Tensor) else float(v) for v in values]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def combined_loss_metrics(
    sft_raw_losses: Sequence, pg_raw_losses: Sequence, plan: CombinedUpdatePlan, *, suffix: str = "_ttt"
) -> dict[str, float]:
    """Logged losses of one combined update from the per-micro-batch raw losses (all mini-batches, in order).

    `actor/sft_loss{suffix}` / `actor/pg_loss{suffix}` are the official scaled means (coef / GA, Q5);
    `actor/ntp_loss_raw{suffix}` / `actor/pg_loss_raw{suffix}` are the plain means of the raw losses.
    """
    sft, pg = _as_floats(sft_raw_losses), _as_floats(pg_raw_losses)
    return {
        f"actor/sft_loss{suffix}": _mean([v * plan.sft_scale for v in sft]),
        f"actor/pg_loss{suffix}": _mean([v * plan.ppo_scale for v in pg]),
        f"actor/ntp_loss_raw{suffix}": _mean(sft),
        f"actor/pg_loss_raw{suffix}": _mean(pg),
    }


def ntp_only_loss_metrics(raw_losses: Sequence, plan: NtpOnlyPlan, *, key: str = "actor/sft_loss_ttt",
                          raw_key: str = "actor/ntp_loss_raw_ttt") -> dict[str, float]:
    """`key` = mean of loss / GA over micro-batches (official, scaled); `raw_key` = mean raw loss."""
    raw = _as_floats(raw_losses)
    return {key: _mean([v * plan.scale for v in raw]), raw_key: _mean(raw)}


def combined_objective(sft_raw_losses: Sequence[torch.Tensor], pg_raw_losses: Sequence[torch.Tensor],
                       plan: CombinedUpdatePlan) -> torch.Tensor:
    """Sum of the scaled micro-batch losses of one mini-batch pair: what its backward calls accumulate.

    With exact divisibility this is sft_coef * mean(NTP) + ppo_coef * mean(pg) over that pair's micro-batches.
    """
    terms = [loss * plan.sft_scale for loss in sft_raw_losses] + [loss * plan.ppo_scale for loss in pg_raw_losses]
    if not terms:
        raise ValueError("combined_objective needs at least one loss")
    return torch.stack([t.reshape(()) for t in terms]).sum()
