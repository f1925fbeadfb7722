"""The real worker RPCs and driver steps in-process (test helper, not a test module): `RefineActorWorker`'s methods
run on a plain HF model with a plain AdamW standing in for verl's FSDP engine, behind a worker group whose
methods call them directly (world size 1: verl's dispatch would hand the whole batch to the one rank, as here).

So `faithful_inner_step` / `fast_inner_step` (the driver side) and every worker RPC they call run unchanged,
without Ray start-up: what the learning tests need to afford several runs of tens of steps.
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import torch


class PlainEngine:
    """The engine methods the worker RPCs call, over a plain model and AdamW (verl's FSDP engine offers the same
    names): gradient clipping at `grad_clip` as verl's actor (`actor.grad_clip`, default 1.0), a constant lr."""

    def __init__(self, module, *, lr: float, weight_decay: float = 0.01, grad_clip: float = 1.0):
        self.module, self.grad_clip = module, grad_clip
        self.optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)

    @contextlib.contextmanager
    def eval_mode(self):
        self.module.eval()
        try:
            yield
        finally:
            self.module.train()

    @contextlib.contextmanager
    def train_mode(self):
        self.module.train()
        yield

    def get_data_parallel_rank(self) -> int:
        return 0

    def optimizer_zero_grad(self):
        self.optimizer.zero_grad()

    def optimizer_step(self):
        norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.grad_clip)
        if torch.isfinite(norm):
            self.optimizer.step()
        return norm

    def lr_scheduler_step(self):
        return self.optimizer.param_groups[0]["lr"]


def plain_worker(module, *, lr: float):
    """A `RefineActorWorker` whose engine is a `PlainEngine` on `module` (verl's worker set-up skipped)."""
    from refine.worker.worker import RefineActorWorker

    worker = object.__new__(RefineActorWorker)
    worker.actor = SimpleNamespace(engine=PlainEngine(module, lr=lr))
    return worker


class InProcessWorkerGroup:
    """`wg.<rpc>(data)` -> the worker's RPC called directly (world size 1)."""

    def __init__(self, worker):
        self._worker = worker

    def __getattr__(self, name):
        method = getattr(type(self._worker), name)
        return lambda *args: method(self._worker, *args)


def demo_documents(n_docs: int, seq_len: int, *, first_row: int = 0):
    """(input_ids, attention_mask) [n_docs, seq_len] of fixed rows of the demo mid-training file, tokenized by the
    demo tokenizer, the head kept and left-padded as the dataset does; and the pad id."""
    import pandas as pd
    from transformers import AutoTokenizer

    from refine.preflight.compose import REPO_ROOT

    tokenizer = AutoTokenizer.from_pretrained(REPO_ROOT / "data" / "demo" / "model")
    texts = pd.read_parquet(REPO_ROOT / "data" / "demo" / "midtrain_train.parquet")["text"]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((n_docs, seq_len), pad, dtype=torch.long)
    mask = torch.zeros(n_docs, seq_len, dtype=torch.long)
    for row in range(n_docs):
        tokens = tokenizer(texts[first_row + row], add_special_tokens=False)["input_ids"][:seq_len]
        ids[row, seq_len - len(tokens):] = torch.tensor(tokens)
        mask[row, seq_len - len(tokens):] = 1
    return ids, mask, pad


def demo_model():
    """The shipped demo DeltaNet (pre-trained), fp32, training mode."""
    import refine.models  # noqa: F401
    from transformers import AutoModelForCausalLM

    from refine.preflight.compose import REPO_ROOT

    return AutoModelForCausalLM.from_pretrained(REPO_ROOT / "data" / "demo" / "model").float().train()


def nsp_run(rc, ids, mask, pad, *, steps: int, lr: float, seed: int = 0, model=None) -> list[dict]:
    """`steps` inner steps of `rc.nsp_mode` on the same documents (one batch, as a fixed-data learning curve) through
    the real driver step and worker RPCs in-process; the metrics of each step."""
    import numpy as np
    from verl import DataProto

    from refine.driver.nsp_step import StepSettings, inner_step

    torch.manual_seed(seed)
    module = model if model is not None else demo_model()
    wg = InProcessWorkerGroup(plain_worker(module, lr=lr))
    step = inner_step(rc.nsp_mode)
    batch = DataProto.from_dict(tensors={"input_ids": ids, "attention_mask": mask},
                                non_tensors={"uid": np.array([f"doc{i}" for i in range(len(ids))], dtype=object)})
    history = []
    for index in range(steps):
        settings = StepSettings(world_size=1, pad_token_id=pad, seed=seed * 10_000 + index, sft=True, ppo=True)
        history.append(step(wg, batch, rc, settings))
    return history


class TaskTrainer:
    """What `task_update.task_grpo_update` reads of a trainer, in-process: the config, tokenizer, worker group, world
    size 1 and the driver's seed stream."""

    def __init__(self, module, config, tokenizer, *, lr: float, seed: int = 0):
        self.config, self.tokenizer, self.world_size = config, tokenizer, 1
        self.actor_rollout_wg = InProcessWorkerGroup(plain_worker(module, lr=lr))
        self._seeds = torch.Generator().manual_seed(seed)

    def next_step_seed(self) -> int:
        return int(torch.randint(0, 2**31 - 1, (1,), generator=self._seeds))
