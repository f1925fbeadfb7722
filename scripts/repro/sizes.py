"""Every size and hyper-parameter of the study, in one place (full study and `--quick`).

The two arms of each phase share everything here (learning rate, steps, batch, documents, seeds); they differ only
in the ReFINE flags chosen in `scripts/repro/runs.py`. Nothing was tuned on the test split: the values below were
set before the study from the demo defaults (configs/preset/embedded_demo.yaml) and the paper's per-phase values
(C, k, reward, coefficients), scaled to 2 CPU cores.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Sizes:
    # pre-training (plain PyTorch AdamW, cosine decay, as scripts/build_demo_model.py)
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    pretrain_steps: int = 300
    pretrain_batch: int = 8
    pretrain_seq_len: int = 256
    pretrain_lr: float = 2e-3
    # copy warm-up before the NTP pre-training (scripts/repro/pretrain.py says why)
    copy_steps: int = 1600
    copy_vocab_steps: int = 1000     # the first copy steps draw ids below copy_small_vocab, the rest from all 512
    copy_small_vocab: int = 57
    copy_span: int = 32              # rows [x][x], x of copy_span ids
    copy_batch: int = 16
    pretrain_copy_share: float = 0.25  # NTP pre-training windows that carry one random-id span written twice
    # mid-training (both arms: same steps, documents, lr)
    seeds: tuple[int, ...] = (1, 2, 3)
    train_len: int = 256             # rows of 252-256 tokens = data.max_prompt_length
    mid_steps: int = 32
    mid_batch: int = 4
    lr: float = 3e-4                 # every trainer run, both arms
    n_chunks: int = 4                # C
    response_length: int = 5         # k
    reward: str = "cosine_similarity"
    sampling: str = "entropy"
    ppo_coef: float = 0.2            # paper's mid-training value
    # post-training on ruler_synthqa (both arms: same steps, rows, lr)
    post_steps: int = 16
    post_batch: int = 4
    post_reward: str = "hybrid"      # paper's post-training value
    # test-time training on the held-out QA prompts
    ttt_reward: str = "binary"       # paper's TTT value
    ttt_ppo_coef: float = 0.4
    ttt_steps: int = 4               # one pass over the 16 held-out prompts, batches of qa_val_batch
    qa_val_batch: int = 4
    answer_tokens: int = 16
    # evaluation (held-out test documents)
    ntp_lengths: tuple[int, ...] = (256, 512, 1024)
    short_len: int = 64
    ntp_windows: int = 16
    nsp_lengths: tuple[int, ...] = (256, 1024)
    nsp_positions: int = 64
    recall_lengths: tuple[int, ...] = (128, 256, 512, 1024)
    recall_span: int = 24
    recall_samples: int = 32
    niah_lengths: tuple[int, ...] = (256, 512)  # up to 2x the training length: beyond, NIAH is not a measure a model this size can move
    niah_samples: int = 16
    extra: dict = field(default_factory=dict)


FULL = Sizes()
# --quick: the same pipeline end to end, sizes that prove nothing (CI)
QUICK = replace(
    FULL, hidden_size=64, num_layers=2, num_heads=2, pretrain_steps=10, pretrain_batch=4, pretrain_seq_len=128,
    copy_steps=20, copy_vocab_steps=10, seeds=(1,), mid_steps=2, post_steps=2, ttt_steps=1, ntp_lengths=(128, 256), ntp_windows=2, nsp_lengths=(128,),
    nsp_positions=3, recall_lengths=(96, 256), recall_samples=2, niah_lengths=(256,), niah_samples=2,
    train_len=128,
)
