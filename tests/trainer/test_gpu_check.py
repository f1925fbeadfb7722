"""scripts/gpu_check.sh on a machine without a GPU: the one-line refusal, the commands its --dry-run prints, its list
of GPU-only tests, and the DeltaNet-1.3B model and 16K documents it builds (checked on the meta device / CPU)."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess

import pytest
import torch

from refine.preflight.compose import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "gpu_check.sh"


@pytest.fixture(scope="module")
def gpu_check():
    """scripts/gpu_check.py imported as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("gpu_check", REPO_ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dry_run():
    """The commands of `GPUS=8 gpu_check.sh --dry-run`, each split as the shell would."""
    done = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--out", "/ckpt/gpu_check"], capture_output=True,
                          text=True, timeout=60, cwd="/",
                          env={**{k: v for k, v in os.environ.items() if k != "PYTHON"}, "GPUS": "8"})
    assert done.returncode == 0, done.stderr
    return [shlex.split(line) for line in done.stdout.splitlines()]


def test_refuses_in_one_line_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("this host has a GPU: the refusal cannot happen")
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check.sh: needs an NVIDIA GPU, but torch "), lines
    assert "--dry-run" in lines[0]


def test_dry_run_prints_the_tests_the_build_both_nsp_steps_and_the_summary(dry_run):
    from refine.preflight.compose import compose
    from refine.preflight.aliases import apply_official_aliases
    from refine.preflight.unknown_keys import check_unknown_keys

    tests, build, *steps, summary = dry_run
    assert tests[tests.index("pytest") - 2:tests.index("pytest") + 1] == [".venv/bin/python", "-m", "pytest"]
    assert build[1:] == ["scripts/gpu_check.py", "build", "--out", "/ckpt/gpu_check", "--docs", "16",
                         "--seq-len", "16384"]
    assert summary[1:] == ["scripts/gpu_check.py", "summary", "--out", "/ckpt/gpu_check", "--tokens",
                           str(16 * 16384), "faithful", "fast"]
    modes = []
    for step in steps:
        overrides = step[step.index("refine.main") + 1:]
        config = compose(overrides)
        check_unknown_keys(config)  # no misspelt key in the command
        apply_official_aliases(config)
        modes.append(config.refine.nsp_mode)
        assert config.data.max_prompt_length == 16384 and config.refine.micro_batch_size_per_gpu == 2
        assert config.refine.log_prob_micro_batch_size_per_gpu == 2 and config.trainer.n_gpus_per_node == 8
        # 2 documents per GPU: one micro-batch each, one optimiser step
        assert config.data.train_batch_size == config.refine.mini_batch_size == 16
        assert config.trainer.total_training_steps == 1 and config.trainer.device == "cuda"
        assert config.actor_rollout_ref.model.path == "/ckpt/gpu_check/model"
        assert config.actor_rollout_ref.actor.fsdp_config.mixed_precision.param_dtype == "bf16"
        assert config.trainer.default_local_dir == f"/ckpt/gpu_check/runs/{config.refine.nsp_mode}"
    assert modes == ["faithful", "fast"]


def test_the_gpu_test_list_holds_every_test_that_skips_without_cuda(dry_run):
    """Every `skipif(not torch.cuda.is_available())` in tests/ (a module's pytestmark or one test) is run."""
    listed = {arg for arg in dry_run[0] if arg.startswith("tests/")}
    found = set()
    for path in sorted((REPO_ROOT / "tests").rglob("test_*.py")):
        lines = path.read_text().splitlines()
        rel = path.relative_to(REPO_ROOT).as_posix()
        for i, line in enumerate(lines):
            if not re.match(r"(pytestmark\s*=\s*|@)pytest\.mark\.skipif\(\s*not\s+torch\.cuda\.is_available\(\)", line):
                continue
            if line.startswith("pytestmark"):
                found.add(rel)
            else:
                name = next(re.match(r"def (\w+)", ln).group(1) for ln in lines[i + 1:] if ln.startswith("def "))
                found.add(f"{rel}::{name}")
    assert found and found <= listed, sorted(found - listed)
    assert all((REPO_ROOT / item.split("::")[0]).is_file() for item in listed)


def test_model_config_is_deltanet_1_3b_on_the_meta_device(gpu_check):
    # spec official-behaviour §5.2 (fla-hub/delta_net-1.3B-100B)
    config = gpu_check.deltanet_config()
    assert (config.model_type, config.hidden_size, config.num_hidden_layers, config.num_heads, config.vocab_size,
            config.expand_k, config.expand_v, config.conv_size, config.use_short_conv, config.use_beta,
            config.qk_norm, config.qk_activation, config.use_output_norm, config.fuse_cross_entropy) == (
        "delta_net", 2048, 24, 16, 32000, 1, 1, 4, True, True, "l2", "silu", True, True)
    # by hand: embeddings + lm_head + final norm + 24 x (2 norms, q/k/v/o, beta, 3 short convs, output norm, MLP)
    by_hand = 2 * 32000 * 2048 + 2048 + 24 * (2 * 2048 + 4 * 2048**2 + 16 * 2048 + 3 * 2048 * 4 + 128
                                              + 3 * 2048 * 5632)
    assert gpu_check.count_params() == by_hand == 1_365_677_056


def test_documents_fill_16k_tokens_without_exceeding_them(gpu_check, tmp_path):
    import pandas as pd
    from transformers import AutoTokenizer

    gpu_check.build_docs(tmp_path / "docs.parquet", 2, 16384)
    docs = pd.read_parquet(tmp_path / "docs.parquet")["text"].tolist()
    tokenizer = AutoTokenizer.from_pretrained(REPO_ROOT / "data" / "demo" / "model")
    lengths = [len(ids) for ids in tokenizer(docs, add_special_tokens=False)["input_ids"]]
    assert len(docs) == 2 and docs[0] != docs[1]
    assert all(16384 - 2 * gpu_check.MARGIN_TOKENS <= n <= 16384 for n in lengths), lengths
