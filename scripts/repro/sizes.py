"""Every size and hyper-parameter of the study, in one place (full study and `--quick`).

Fixed before the study's runs (issue 23), from the demo defaults (configs/preset/embedded_demo.yaml), the
paper's per-phase values (C, k, reward, coefficients) and the issue's design (pre-train at L, mid-train at 4L),
scaled to 2 CPU cores. Nothing here was tuned on the test split. Version 2 changed, after version 1's positive
control did not move: the second positive control is the model trained on the task directly (the post-training
control arm, 64 task updates: `scripts/repro/pilot.py` showed on the *validation* split that this moves the primary
measure while more NTP mid-training steps, denser or longer-range planted pairs and a higher learning rate do not);
the controls and ablations run on every seed; 192 items per distance bin. The arms of a phase share everything below and
differ only in the flags of `scripts/repro/runs.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

STUDY_VERSION = "kv-retrieval-v2"   # a results file from another version of the study is refused


@dataclass(frozen=True)
class Sizes:
    # model (fla DeltaNet)
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    # copy warm-up (scripts/repro/pretrain.py says why), then NTP pre-training at length L with planted pairs
    copy_steps: int = 1600
    copy_vocab_steps: int = 1000     # the first copy steps draw ids below copy_small_vocab, the rest from all 512
    copy_small_vocab: int = 57
    copy_span: int = 32
    copy_batch: int = 16
    pretrain_steps: int = 600
    pretrain_batch: int = 8
    pretrain_len: int = 128          # L
    pretrain_lr: float = 2e-3
    pretrain_pairs: int = 2          # queried pairs per pre-training window (distance < L)
    # mid-training: context extension to 4L, both arms the same documents, updates, tokens, lr
    seeds: tuple[int, ...] = (1, 2, 3)
    mid_len: int = 512               # 4L = data.max_prompt_length of mid- and post-training
    mid_pairs: int = 4               # queried pairs per mid-training document (any distance < mid_len)
    mid_steps: int = 32
    mid_batch: int = 4               # = refine.mini_batch_size: one optimiser step per global step, both arms
    control_steps: int = 64          # positive control: the NTP arm with 2x the updates (and documents)
    lr: float = 3e-4                 # every trainer run
    n_chunks: int = 4                # C
    n_per_prefix: int = 1            # official grouping (ttt_n = 1)
    response_length: int = 5         # k
    reward: str = "cosine_similarity"
    sampling: str = "entropy"
    sft_coef: float = 1.0            # official mix
    ppo_coef: float = 0.2            # paper's mid-training value
    # mid-training control arms (v1's "ntp_2x": NTP with 2x the updates; dropped in v2, see the docstring)
    controls: tuple[str, ...] = ()
    # the control and ablation arms run on these seeds (paired with the same seeds of their baseline)
    control_seeds: tuple[int, ...] = (1, 2, 3)
    ablations: tuple[str, ...] = ("refine_n4", "refine_rl")
    # post-training: task SFT on planted-pair queries (train split), from the pre-trained model
    post_steps: int = 64             # also the positive control C2 (post/ctl: trained on the task directly)
    post_batch: int = 4
    post_items: int = 256
    post_reward: str = "hybrid"
    # test-time training: the inner loop on held-out query prompts (prompts only), from each seed's ReFINE
    # post-trained model; both TTT arms one optimiser step per global step
    ttt_items: int = 64              # held-out prompts (distance bin ttt_bin), one pass in batches of ttt_batch
    ttt_batch: int = 4
    ttt_bin: tuple[int, int] = (128, 384)
    ttt_reward: str = "binary"
    ttt_ppo_coef: float = 0.4
    # evaluation (test split): the primary measure and the secondary ones
    bins: tuple[tuple[int, int], ...] = ((16, 128), (128, 256), (256, 512), (512, 1024))
    primary_bins: tuple[str, ...] = ("128-256", "256-512")   # beyond L, within the mid-training length
    items_per_bin: int = 192
    ntp_lengths: tuple[int, ...] = (512, 1024)
    ntp_windows: int = 16
    short_len: int = 64
    nsp_len: int = 512
    nsp_positions: int = 48
    collapse_windows: int = 8
    bootstrap: int = 2000


FULL = Sizes()
# --quick: the same pipeline end to end at sizes that prove nothing (CI)
QUICK = replace(
    FULL, hidden_size=64, num_layers=2, num_heads=2, copy_steps=20, copy_vocab_steps=10, pretrain_steps=10,
    pretrain_batch=4, pretrain_len=64, seeds=(1,), control_seeds=(1,), mid_len=128, mid_steps=2, control_steps=4, controls=(), ablations=(),
    post_steps=1, post_items=8, ttt_items=4, ttt_bin=(32, 96), bins=((16, 64), (64, 128)), primary_bins=("64-128",),
    items_per_bin=4, ntp_lengths=(128,), ntp_windows=2, nsp_len=128, nsp_positions=3, collapse_windows=2, bootstrap=50,
)
