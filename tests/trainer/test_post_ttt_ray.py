"""Post-training and test-time training through Ray on CPU (spec 1.2, 1.3, 2.B, 2.D, Q1), tiny DeltaNet, fp32.

Data: 4 + 4 rows of the shipped RULER squadqa test file with their prompts cut to fit 96-token rows.
"""

from __future__ import annotations

import pytest
import torch

from refine.settings import ValidationSettings, settings_of

pytestmark = pytest.mark.slow


def ruler_overrides(ruler_files, tmp_path):
    train, val = ruler_files
    return ["refine.answer_key=answer", "refine.data_source_key=task", "data.prompt_key=prompt",
            f"data.train_files={train}", f"data.val_files={val}", "data.max_prompt_length=96",
            "data.max_response_length=8", f"trainer.default_local_dir={tmp_path}"]


def check_predictions(path, metrics):
    """The predictions file has one row per scored example and its scores give the logged val_reward; each score
    is the RULER scorer's on the row's own prediction and answers (recomputed here)."""
    import json

    from refine.scoring.ruler import score as ruler_score

    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == metrics["val_n_scored"]
    assert sum(r["score"] for r in rows) / len(rows) == pytest.approx(metrics["val_reward"])
    for row in rows:
        assert row["data_source"] == "ruler_squadqa" and 0 < len(row["prompt_tail"]) <= 300
        assert row["score"] == pytest.approx(ruler_score(row["prediction"], row["answers"]))
    return rows


def test_post_training_two_steps_then_ruler_validation(make_trainer, params, ruler_files, tmp_path):
    trainer = make_trainer(ruler_overrides(ruler_files, tmp_path) + [
        "refine.task_sft_update=true", "refine.val_get_loss=false", "trainer.total_training_steps=2",
        "trainer.test_freq=2", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2"])
    before = params(trainer)
    trainer.fit()
    steps = {r["step"]: r for r in trainer.history if "training/global_step" in r}
    assert sorted(steps) == [1, 2]
    for record in steps.values():
        for key in ("actor/sft_loss", "actor/grad_norm", "actor/lr", "actor/sft_loss_ttt", "reward/cs_reward_mean",
                    "timing_s/task_update", "timing_s/update_actor_task", "perf/cpu_memory_used_gb"):
            assert key in record, key
    last = steps[2]
    assert 0.0 <= last["val_reward"] <= 1.0 and last["val_n_scored"] == 4.0
    assert last["val_reward/ruler_squadqa"] == last["val_reward"]
    check_predictions(tmp_path / "predictions" / "step_2.jsonl", last)
    after_sft = params(trainer)
    assert (after_sft - before).abs().max() > 0

    # Task GRPO (off in the demos, implemented) on the same workers: one outer step with rollout.n = 2 answers per
    # prompt, RULER reward, GRPO, upstream PPO update (mini-batch 2 prompts x 2 answers, micro 2).
    import dataclasses

    from omegaconf import open_dict
    from verl import DataProto

    with open_dict(trainer.config):
        trainer.config.actor_rollout_ref.rollout.n = 2
        trainer.config.actor_rollout_ref.actor.ppo_mini_batch_size = 2
    trainer.rc = dataclasses.replace(trainer.rc, ttt_sft_update=False, ttt_ppo_update=False, task_sft_update=False,
                                     task_ppo_update=True)
    batch = DataProto.from_single_dict(next(iter(trainer.train_dataloader)))
    record = trainer.train_step(batch)
    for key in ("actor/pg_loss", "actor/grad_norm", "actor/lr", "critic/score/mean", "critic/advantages/max",
                "response_length/mean", "timing_s/gen_task", "timing_s/old_log_prob_task", "timing_s/update_actor_task"):
        assert key in record, key
    assert 0.0 <= record["critic/score/mean"] <= 1.0
    assert 1.0 <= record["response_length/mean"] <= 8.0
    assert (params(trainer) - after_sft).abs().max() > 0




def test_test_time_training_reset_modes(make_trainer, params, ruler_files, tmp_path):
    """`batch`: weights restored bit for bit after every batch; then `cumulative` (official, Q1) on the same
    workers: the weights change with each batch and stay changed."""
    import dataclasses

    trainer = make_trainer(ruler_overrides(ruler_files, tmp_path) + [
        "trainer.val_only=true", "trainer.val_before_train=true", "data.train_files=null",
        "refine.ttt_sft_update=false", "refine.ttt_ppo_update=false", "refine.val_get_loss=false",
        "refine.val_ttt_sft_update=true", "refine.val_ttt_ppo_update=true", "refine.ttt_reset=batch",
        "refine.mini_batch_size=2", "data.val_batch_size=2"])
    seen = []  # weights when each batch is answered (after its TTT) and after each restore
    wg = trainer.actor_rollout_wg
    generate, restore = wg.generate_greedy, wg.restore_state

    def generate_and_record(data):
        seen.append(("answer", params(trainer)))
        return generate(data)

    def restore_and_record(*args, **kwargs):
        out = restore(*args, **kwargs)
        seen.append(("restored", params(trainer)))
        return out

    wg.generate_greedy = generate_and_record
    wg.restore_state = restore_and_record

    initial = params(trainer)
    trainer.fit()  # val_only: TTT over the 2 validation batches, reset mode "batch"
    record = trainer.history[0]
    assert record["step"] == 0 and record["val_n_scored"] == 4.0 and 0.0 <= record["val_reward"] <= 1.0
    check_predictions(tmp_path / "predictions" / "step_0.jsonl", record)
    import importlib.util

    from refine.preflight.compose import REPO_ROOT

    spec = importlib.util.spec_from_file_location("longbench_report", REPO_ROOT / "scripts" / "longbench_report.py")
    report_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report_module)
    report = report_module.main(["--predictions", str(tmp_path / "predictions" / "step_0.jsonl")])
    assert report["tasks"]["ruler_squadqa"]["n"] == 4
    answers = [p for kind, p in seen if kind == "answer"]
    restored = [p for kind, p in seen if kind == "restored"]
    assert len(answers) == 2 and len(restored) == 2
    assert all((p - initial).abs().max() > 0 for p in answers), "TTT did not change the weights"
    assert all(torch.equal(p, initial) for p in restored)
    assert torch.equal(params(trainer), initial)

    seen.clear()
    trainer.rc = dataclasses.replace(trainer.rc, ttt_reset="cumulative")
    metrics = trainer._validate()
    assert metrics["val_n_scored"] == 4.0
    answers = [p for kind, p in seen if kind == "answer"]
    assert len(answers) == 2 and not any(kind == "restored" for kind, _ in seen)
    assert (answers[0] - initial).abs().max() > 0
    assert (answers[1] - answers[0]).abs().max() > 0, "cumulative TTT stopped changing the weights"
    assert torch.equal(params(trainer), answers[1])


def test_generation_validation_with_row_max_gen_tokens(make_trainer, ruler_files, tmp_path):
    """Validation by generation alone (val_only, no TTT) on LongBench rows of two tasks, each row decoded up to its
    own `max_gen_tokens` (refine.use_row_max_gen_tokens, Q12), scored by the LongBench scorer of its task."""
    import pandas as pd

    from refine.preflight.compose import REPO_ROOT

    rows = []
    for task in ("trec", "hotpotqa"):
        frame = pd.read_parquet(REPO_ROOT / "data" / "longbench" / f"{task}_16384.parquet")
        rows.append(frame[["prompt", "answers", "task", "max_gen_tokens"]].iloc[:2])
    data = pd.concat(rows, ignore_index=True)
    data["prompt"] = data["prompt"].map(lambda text: text[-200:])
    data["max_gen_tokens"] = [3, 6, 4, 5]  # small per-row limits keep the decoding short
    path = tmp_path / "longbench.parquet"
    data.to_parquet(path)
    trainer = make_trainer([
        "refine.answer_key=answers", "refine.data_source_key=task", "data.prompt_key=prompt",
        f"data.val_files={path}", "data.train_files=null", "data.max_prompt_length=96", "data.max_response_length=32",
        "trainer.val_only=true", "trainer.val_before_train=true", "refine.ttt_sft_update=false",
        "refine.ttt_ppo_update=false", "refine.val_get_loss=false", "refine.use_row_max_gen_tokens=true",
        "data.val_batch_size=2", f"trainer.default_local_dir={tmp_path / 'run'}"])
    asked = []
    generate = trainer.actor_rollout_wg.generate_greedy
    trainer.actor_rollout_wg.generate_greedy = lambda d: asked.append(
        settings_of(d, ValidationSettings).max_new_tokens) or generate(d)
    trainer.fit()
    record = trainer.history[0]
    assert asked == [6, 5]  # the longest limit of each batch; every row is then cut to its own
    assert record["val_n_scored"] == 4.0 and 0.0 <= record["val_reward"] <= 1.0
    assert {"val_reward/trec", "val_reward/hotpotqa"} <= set(record)
