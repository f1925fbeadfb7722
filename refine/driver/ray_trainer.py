"""`RefineTrainer(RayPPOTrainer)`: verl's Ray driver with ReFINE's worker set-up, loop, validation and RNG state.

Overridden seams (everything else is verl's): `_create_dataloader` (official validation loader: no shuffle,
`drop_last=True`), `init_workers` (only the actor worker group: no vLLM/SGLang server, agent loop, reward loop or
checkpoint engine), `fit` (the ReFINE step: inner loop, outer loop, validation, checkpoint, metrics), `_validate`
(by phase), `_save_checkpoint` / `_load_checkpoint` (verl's, plus the position-selection RNG state).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from torchdata.stateful_dataloader import StatefulDataLoader
from tqdm import tqdm
from verl import DataProto
from verl.single_controller.ray import RayClassWithInitArgs
from verl.trainer.ppo.ray_trainer import RayPPOTrainer, Role
from verl.utils.profiler import simple_timer

from refine.driver import validation
from refine.driver.checkpoints import (
    REFINE_STATE_FILE,
    CheckpointError,
    begin_save,
    describe_save_failure,
    record_completion,
    repair_latest,
    save_refine_state,
    set_latest,
    verify_for_load,
)
from refine.driver.health import StepHealth, TrainingStopped
from refine.driver.nsp_step import StepSettings, inner_step
from refine.driver.plot import plot_history
from refine.driver.run_log import PLOT_FILE, RunLog
from refine.driver.preemption import Preempted, preempted_message, stop_reason
from refine.driver.retention import checkpoints_to_keep, remove_old_steps, verl_deletes_nothing
from refine.driver.task_update import task_update
from refine.preflight.schema import RefineConfig
from refine.settings import n_workers
from refine.verbosity import quiet_stdout, verbose


class RefineTrainer(RayPPOTrainer):
    """The ReFINE driver. `refine_config` is the validated `refine:` group (`refine.preflight.schema`)."""

    def __init__(self, *args, refine_config: RefineConfig, pad_token_id: int, **kwargs):
        self.rc = refine_config
        self.pad_token_id = int(pad_token_id)
        super().__init__(*args, **kwargs)
        # Draws one seed per inner step; its state is checkpointed, so a resumed run draws what the
        # uninterrupted run would have drawn (the official code is unseeded, Q27).
        self.nsp_rng = torch.Generator().manual_seed(int(self.rc.seed))
        self.history: list[dict] = []

    # ---- data ------------------------------------------------------------------------------------------------
    def _create_dataloader(self, train_dataset, val_dataset, collate_fn, train_sampler):
        with quiet_stdout():  # verl's loader sizes and step count: the step lines show the count
            super()._create_dataloader(train_dataset, val_dataset, collate_fn, train_sampler)

        # Official validation loader (spec 1.0 / Q11): no shuffle and drop_last=True (trailing rows never scored).
        val_batch_size = self.config.data.val_batch_size or len(self.val_dataset)
        self.val_dataloader = StatefulDataLoader(
            dataset=self.val_dataset,
            batch_size=val_batch_size,
            num_workers=self.config.data["dataloader_num_workers"],
            shuffle=False,
            drop_last=True,
            collate_fn=self.val_dataloader.collate_fn,
        )
        if len(self.val_dataloader) < 1:
            raise ValueError(
                f"data.val_batch_size={val_batch_size} is larger than the {len(self.val_dataset)} validation rows "
                "(the validation loader drops the last incomplete batch, as officially); lower data.val_batch_size"
            )

    # ---- workers ---------------------------------------------------------------------------------------------
    def init_workers(self):
        """Start only the actor worker group (role "actor": FSDP model + optimiser, no rollout engine)."""
        self.resource_pool_manager.create_resource_pool()
        pool = self.resource_pool_manager.get_resource_pool(Role.ActorRollout)
        worker_cls = RayClassWithInitArgs(
            cls=self.role_worker_mapping[Role.ActorRollout], config=self.config.actor_rollout_ref, role="actor"
        )
        wg_kwargs = {"device_name": self.device_name}
        timeout = OmegaConf.select(self.config.trainer, "ray_wait_register_center_timeout")
        if timeout is not None:
            wg_kwargs["ray_wait_register_center_timeout"] = timeout
        self.actor_rollout_wg = self.ray_worker_group_cls(resource_pool=pool, ray_cls_with_init=worker_cls, **wg_kwargs)
        self.actor_rollout_wg.init_model()
        self.async_rollout_manager = None
        self.checkpoint_manager = None

    @property
    def world_size(self) -> int:
        return n_workers(self.config)

    # ---- one step ----------------------------------------------------------------------------------------------
    def next_step_seed(self) -> int:
        return int(torch.randint(0, 2**31 - 1, (1,), generator=self.nsp_rng))

    def inner_loop(self, batch: DataProto, *, validation: bool = False) -> dict[str, float]:
        """One inner NSP/NTP update on `batch` (training flags, or the val_ttt_* flags when `validation`); its
        metrics."""
        rc = self.rc
        sft = rc.val_ttt_sft_update if validation else rc.ttt_sft_update
        ppo = rc.val_ttt_ppo_update if validation else rc.ttt_ppo_update
        settings = StepSettings(
            world_size=self.world_size, pad_token_id=self.pad_token_id, seed=self.next_step_seed(), sft=sft, ppo=ppo
        )
        inner_batch = DataProto.from_dict(
            tensors={"input_ids": batch.batch["input_ids"], "attention_mask": batch.batch["attention_mask"]},
            non_tensors={"uid": batch.non_tensor_batch["uid"]},
        )
        return inner_step(rc.nsp_mode)(self.actor_rollout_wg, inner_batch, rc, settings)

    def outer_loop(self, batch: DataProto) -> dict:
        """Outer task update on the full batch (post-training, spec 2.B), after the inner loop, same weights (Q2)."""
        return task_update(self, batch)

    def train_step(self, batch: DataProto) -> dict:
        """One global step on a training batch: inner loop, then outer loop (same weights and optimiser, Q2)."""
        metrics: dict[str, float] = {}
        timing: dict[str, float] = {}
        batch.non_tensor_batch["uid"] = np.array(
            [f"{self.global_steps}-{i}" for i in range(len(batch))], dtype=object
        )
        with simple_timer("step", timing):
            if self.rc.inner_enabled:
                with simple_timer("ttt_update", timing):
                    metrics.update(self.inner_loop(batch))
            if self.rc.outer_enabled:
                with simple_timer("task_update", timing):
                    metrics.update(self.outer_loop(batch))
        metrics.update({f"timing_s/{k}": v for k, v in timing.items()})
        return metrics

    # ---- validation ----------------------------------------------------------------------------------------------
    def _validate(self, merged: bool = False):
        return validation.validate(self)

    # ---- checkpoints ---------------------------------------------------------------------------------------------
    def _step_folder(self, step: int) -> str:
        return os.path.join(self.config.trainer.default_local_dir, f"global_step_{step}")

    def _save_checkpoint(self):
        """verl's checkpoint, complete before the latest pointer moves: refine_state.pt first, the completion record
        (sizes, checksums) after verl's files, the pointer rewritten atomically last, then old steps removed
        (`retention`); a failure names the folder, the cause and the free space."""
        folder = Path(self._step_folder(self.global_steps))
        state = {"nsp_rng": self.nsp_rng.get_state(), "seed": torch.tensor(int(self.rc.seed))}
        try:
            begin_save(folder)
            save_refine_state(folder, state)
            with verl_deletes_nothing(self.config.trainer), quiet_stdout():  # verl prints each step folder
                super()._save_checkpoint()
            record_completion(folder, self.global_steps)
            set_latest(self.run_dir, self.global_steps)
        except Exception as exc:  # noqa: BLE001 - any failure here (disk full, permissions, a worker) is reported
            raise CheckpointError(describe_save_failure(exc, folder)) from exc
        remove_old_steps(self.run_dir, checkpoints_to_keep(self.config.trainer), latest=self.global_steps)

    def _load_checkpoint(self):
        mode = self.config.trainer.resume_mode
        if mode == "auto":
            repair_latest(self.run_dir)  # verified: a step whose files do not match is never loaded
        elif mode == "resume_path":
            verify_for_load(Path(str(self.config.trainer.resume_from_path)))
        with quiet_stdout():  # verl's resume messages, one of them printed unformatted ("Found checkpoint: %s")
            super()._load_checkpoint()
        if self.global_steps <= 0:
            return
        if self.config.trainer.resume_mode == "resume_path":
            folder = str(self.config.trainer.resume_from_path)
        else:
            folder = self._step_folder(self.global_steps)
        path = os.path.join(folder, REFINE_STATE_FILE)
        if os.path.exists(path):
            state = torch.load(path, weights_only=True)
            self.nsp_rng.set_state(state["nsp_rng"])
        else:
            print(f"Warning: no {REFINE_STATE_FILE} in {folder}; the position-selection RNG restarts from refine.seed")

    # ---- the loop ------------------------------------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        return Path(self.config.trainer.default_local_dir)

    def _log(self, tracker, metrics: dict, step: int) -> None:
        tracker.log(data=metrics, step=step)
        self.history.append({"step": step, **metrics})

    def fit(self):
        """ReFINE training: resume, optional validation first, then per batch inner/outer update, validation,
        checkpoint and metrics (spec 1.0 step 5). Writes metrics.jsonl, metrics.png and run_state.json into the run
        directory (`run_log`), one line per step to the console, and a summary that ends with the next command."""
        trainer_cfg = self.config.trainer
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.global_steps = 0
        self._load_checkpoint()
        if self.global_steps > 0:
            print(f"refine: resuming from {self._step_folder(self.global_steps)} (step {self.global_steps})")
        if trainer_cfg.resume_mode != "disable" and self.global_steps > 0 and trainer_cfg.get("val_only", False):
            print(f"Warning: resume_mode={trainer_cfg.resume_mode} resumed weights at step {self.global_steps} "
                  "in a val_only run (as the official code does)")
        trained_reward = self.rc.reward if self.rc.ttt_ppo_update else None
        tracker = RunLog(self.config, self.run_dir, trained_reward, 0 if trainer_cfg.get("val_only", False)
                         else self.total_training_steps, self.global_steps)
        self.history = [{"step": r["step"], **r["data"]} for r in tracker.metrics.kept]

        outcome, error = "failed", None
        try:
            if trainer_cfg.get("val_before_train", True):
                timing: dict[str, float] = {}
                with simple_timer("testing", timing):
                    val_metrics = self._validate()
                val_metrics.update({f"timing_s/{k}": v for k, v in timing.items()})
                self._log(tracker, val_metrics, self.global_steps)
                if trainer_cfg.get("val_only", False):
                    outcome = "finished"
                    return
            self._train(tracker)
            outcome = "finished"
        except (KeyboardInterrupt, SystemExit):
            outcome = "stopped"
            raise
        except BaseException as exc:
            outcome = "stopped" if isinstance(exc, Preempted) else "failed"
            error = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise
        finally:
            tracker.close(outcome, error)
            self._write_plot()
            if outcome == "finished":
                latest = self.run_dir / "latest_checkpointed_iteration.txt"
                step = int(latest.read_text()) if latest.exists() and latest.read_text().strip().isdigit() else None
                print("\n".join(tracker.summary(self.history, step)), flush=True)

    def _train(self, tracker) -> None:
        trainer_cfg = self.config.trainer
        total = self.total_training_steps
        if self.global_steps >= total:
            return
        # the console shows one line per step (run_log); the bar only with REFINE_VERBOSE=1
        progress = tqdm(total=total, initial=self.global_steps, desc="ReFINE steps", disable=not verbose())
        steps_per_epoch = len(self.train_dataloader)
        self.global_steps += 1
        start_epoch = (self.global_steps - 1) // steps_per_epoch
        health = StepHealth(max_consecutive_skips=self.rc.max_consecutive_skips, vocab_size=len(self.tokenizer))
        for epoch in range(start_epoch, trainer_cfg.total_epochs):
            for batch_dict in self.train_dataloader:
                batch = DataProto.from_single_dict(batch_dict)
                metrics = self.train_step(batch)
                trained = health.record(metrics, self.global_steps)
                is_last = self.global_steps >= total
                timing: dict[str, float] = {}
                test_freq, save_freq = trainer_cfg.test_freq, trainer_cfg.save_freq
                if test_freq > 0 and (is_last or self.global_steps % test_freq == 0):
                    with simple_timer("testing", timing):
                        metrics.update(self._validate())
                # a step that did not train is never checkpointed: the latest stays the last good one
                stop = None if is_last else stop_reason(self.run_dir)  # a signal: save this step, then stop
                saved = trained and (bool(stop) or (save_freq > 0 and (is_last or self.global_steps % save_freq == 0)))
                if saved:
                    with simple_timer("save_checkpoint", timing):
                        self._save_checkpoint()
                metrics.update({f"timing_s/{k}": v for k, v in timing.items()})
                # as in verl's fit, a step's time includes its validation and checkpoint
                metrics["timing_s/step"] = metrics.get("timing_s/step", 0.0) + sum(timing.values())
                metrics.update({"training/global_step": self.global_steps, "training/epoch": epoch})
                self._log(tracker, metrics, self.global_steps)
                if health.must_stop:
                    progress.close()
                    latest = self.run_dir / "latest_checkpointed_iteration.txt"
                    raise TrainingStopped(health.stop_message(
                        self.global_steps, self._step_folder(int(latest.read_text())) if latest.exists() else None))
                if stop:
                    progress.close()
                    raise Preempted(preempted_message(
                        stop, self.global_steps, Path(self._step_folder(self.global_steps)) if saved else None))
                progress.update(1)
                if is_last:
                    progress.close()
                    return
                self.global_steps += 1
        progress.close()

    def _write_plot(self) -> None:
        if not self.rc.plot or not self.history:
            return

        try:
            plot_history(self.history, self.run_dir / PLOT_FILE)
        except Exception as exc:  # noqa: BLE001 - a plotting failure must not fail a finished run
            print(f"Warning: could not write the plot: {exc}")

