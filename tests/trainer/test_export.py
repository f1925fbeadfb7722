"""`python -m refine.export`: a trainer checkpoint as an HF model folder for the next phase.

Fast: the one-line refusals (missing folder, a folder that is no checkpoint step, a run folder without a complete
step, an incomplete step, a non-empty output) and the demo scripts' `SMOKE=1` honouring MODEL_PATH. Slow (Ray): a
real checkpoint written by one step of the embedded default, exported and reloaded (logits of the checkpoint's own
weights, dtype kept, file modes, tokenizer), cast with `--dtype bf16`. The next phase on an export: the README's
chain, tests/demo/test_phase_chain.py.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO = REPO_ROOT / "verl" / "examples" / "refine_trainer" / "demo"


def run_export(*argv: str):
    """`python -m refine.export argv` in this process: (exit code, stdout, stderr)."""
    import contextlib
    import io

    from refine.export import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(argv))
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def fake_step(run_dir: Path, step: int, world_size: int = 1, ranks=None) -> Path:
    """A step folder with the layout the export reads (contents are never loaded by the refusal tests)."""
    actor = run_dir / f"global_step_{step}" / "actor"
    (actor / "huggingface").mkdir(parents=True)
    (actor / "fsdp_config.json").write_text(json.dumps({"FSDP_version": 2, "world_size": world_size}))
    for rank in range(world_size) if ranks is None else ranks:
        (actor / f"model_world_size_{world_size}_rank_{rank}.pt").write_bytes(b"x")
    return actor


# ---- refusals: one line on stderr, exit code 2 ---------------------------------------------------------------


def refusal(*argv: str) -> str:
    code, out, err = run_export(*argv)
    assert code == 2 and not out, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("refine.export: "), err
    return lines[0]


def test_a_missing_checkpoint_folder_is_one_line(tmp_path):
    line = refusal(str(tmp_path / "nope"), str(tmp_path / "out"))
    assert f"{tmp_path / 'nope'}: does not exist" in line and "global_step_N/actor" in line
    assert not (tmp_path / "out").exists()


def test_a_folder_that_is_no_checkpoint_names_the_expected_layout(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    line = refusal(str(tmp_path / "model"), str(tmp_path / "out"))
    assert "not a checkpoint step folder (no fsdp_config.json)" in line
    assert "global_step_N/actor (fsdp_config.json, model_world_size_W_rank_R.pt, huggingface/config.json)" in line


def test_a_run_folder_without_a_complete_checkpoint_is_refused(tmp_path):
    fake_step(tmp_path, 2)
    fake_step(tmp_path, 10)  # shards of one byte, no completion record: not complete
    line = refusal(str(tmp_path), str(tmp_path / "out"))
    assert "is a run folder with no complete checkpoint (steps [2, 10] are incomplete)" in line


def test_a_step_with_a_missing_rank_is_refused(tmp_path):
    fake_step(tmp_path, 3, world_size=2, ranks=[0])
    line = refusal(str(tmp_path / "global_step_3"), str(tmp_path / "out"))
    assert "world_size=2" in line and "model_world_size_2_rank_1.pt" in line


def test_a_non_empty_output_folder_is_never_overwritten(tmp_path):
    fake_step(tmp_path, 1)
    (tmp_path / "global_step_1" / "actor" / "huggingface" / "config.json").write_text("{}")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    line = refusal(str(tmp_path / "global_step_1"), str(out))
    assert f"{out}: exists and is not an empty folder" in line and (out / "keep.txt").read_text() == "mine"


def test_an_unreadable_shard_is_one_line_and_leaves_no_output(tmp_path):
    import shutil

    actor = fake_step(tmp_path, 4)  # shards of one byte
    shutil.copyfile(REPO_ROOT / "data" / "demo" / "model" / "config.json", actor / "huggingface" / "config.json")
    code, stdout, err = run_export(str(actor), str(tmp_path / "out"))
    assert code == 2 and not (tmp_path / "out").exists()
    assert stdout == f"refine.export: reading {actor} (world size 1)\n"  # the progress line, then the refusal
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"refine.export: {actor / 'model_world_size_1_rank_0.pt'}: unreadable (")
    assert len(err.strip().splitlines()) == 1, err


# ---- SMOKE=1 honours MODEL_PATH --------------------------------------------------------------------------------

RECORD_ARGS = """#!/bin/sh
# Records the refine.main command line (NUL-separated); anything else (smoke_data.py) runs as Python.
if [ "$1" = "-m" ]; then
    for arg in "$@"; do printf '%s\\0' "$arg"; done > "$ARGS_OUT"
else
    exec "$REAL_PYTHON" "$@"
fi
"""


@pytest.mark.parametrize("script", ["run_midtrain_demo.sh", "run_posttrain_demo.sh", "run_testtimetrain_demo.sh"])
def test_smoke_runs_use_model_path_when_given_else_the_demo_model(tmp_path, script):
    shim = tmp_path / "python"
    shim.write_text(RECORD_ARGS)
    shim.chmod(0o755)
    smoke_dir = tmp_path / "smoke"
    smoke_dir.mkdir()
    for name in ("midtrain_val", "ruler_val", "longbench_val"):  # a filled SMOKE_DIR is reused as it is
        (smoke_dir / f"{name}.parquet").write_bytes(b"")
    base = {k: v for k, v in os.environ.items() if k != "MODEL_PATH"}
    base.update(PYTHON=str(shim), REAL_PYTHON=sys.executable, SMOKE="1", SMOKE_DIR=str(smoke_dir))

    def model_path(env) -> str:
        args_out = tmp_path / "args"
        done = subprocess.run(["bash", str(DEMO / script)], env={**env, "ARGS_OUT": str(args_out)},
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr[-2000:]
        argv = args_out.read_text().split("\0")[:-1]
        return next(a.split("=", 1)[1] for a in argv if a.startswith("actor_rollout_ref.model.path="))

    assert model_path(base) == "data/demo/model"
    assert model_path({**base, "MODEL_PATH": "/ckpt/my_export"}) == "/ckpt/my_export"


# ---- a real checkpoint -----------------------------------------------------------------------------------------


def checkpoint_model(actor: Path):
    """The model of a world-size-1 checkpoint built from its own files: huggingface/config.json and the rank-0
    shard's local tensors (the whole tensors at world size 1)."""
    from torch.distributed.tensor import DTensor
    from transformers import AutoConfig, AutoModelForCausalLM

    shard = torch.load(actor / "model_world_size_1_rank_0.pt", map_location="cpu", weights_only=True)
    weights = {k: v.to_local() if isinstance(v, DTensor) else v for k, v in shard.items()}
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(actor / "huggingface"), dtype=torch.float32)
    model.load_state_dict(weights, strict=True)
    return model.eval(), weights


def safetensors_dtypes(folder: Path) -> set:
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        return {handle.get_slice(k).get_dtype() for k in handle.keys()}


@pytest.mark.slow
def test_export_round_trip(make_trainer, tmp_path):
    from transformers import AutoModelForCausalLM

    import refine.models  # noqa: F401

    run_dir = tmp_path / "run"
    trainer = make_trainer(["trainer.total_training_steps=1", "trainer.save_freq=1",
                            f"trainer.default_local_dir={run_dir}"])
    trainer.fit()
    actor = run_dir / "global_step_1" / "actor"
    reference, weights = checkpoint_model(actor)
    assert {w.dtype for w in weights.values()} == {torch.float32}  # the trainer's fp32 master weights

    out = tmp_path / "export"
    code, stdout, _ = run_export(str(run_dir / "global_step_1"), str(out))  # the step folder itself is accepted
    assert code == 0
    mib = (out / "model.safetensors").stat().st_size / 2**20
    assert stdout.splitlines() == [
        f"refine.export: reading {actor} (world size 1)",
        (f"refine.export: wrote {out}: {len(weights)} tensors, {mib:.1f} MiB, float32 (--dtype keep), tokenizer "
         f"tokenizer.json, tokenizer_config.json; from {actor} (world size 1). "
         "Use it as MODEL_PATH / actor_rollout_ref.model.path"),
        # the run's recorded config says mid-training: the next phase's command on the export
        f"refine.export: next: MODEL_PATH={out} bash verl/examples/refine_trainer/demo/run_posttrain_demo.sh"]

    # dtype kept (verl's merger alone writes bf16), in the file and in config.json
    assert safetensors_dtypes(out) == {"F32"}
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    # normal modes: a new file's 0666 minus the umask (the safetensors writer alone leaves 0600)
    umask = os.umask(0)
    os.umask(umask)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {
        p.name: 0o666 & ~umask for p in out.iterdir()}
    # the checkpoint's tokenizer, byte for byte
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (actor / "huggingface" / name).read_bytes()

    loaded = AutoModelForCausalLM.from_pretrained(out).eval()  # after `import refine.models`, nothing else
    assert loaded.dtype == torch.float32
    ids = torch.randint(3, loaded.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, reference(ids).logits)

    # --dtype bf16: every floating tensor is the checkpoint's value rounded to bf16
    out_bf16 = tmp_path / "export_bf16"
    assert run_export(str(actor), str(out_bf16), "--dtype", "bf16")[0] == 0
    assert safetensors_dtypes(out_bf16) == {"BF16"}
    from safetensors.torch import load_file

    cast = load_file(str(out_bf16 / "model.safetensors"))
    assert all(torch.equal(cast[k], weights[k].to(torch.bfloat16)) for k in weights)

    # the next phase taking it as MODEL_PATH (the post-training demo's smoke run on an export): in
    # tests/demo/test_phase_chain.py, which runs the README's chain
