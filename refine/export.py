"""`python -m refine.export <checkpoint> <out> [--dtype keep|bf16|fp32]`: a trainer checkpoint as an HF model folder.

The checkpoint is a step folder the trainer wrote (`<run>/global_step_N/actor`, or `global_step_N` itself; the run
folder itself stands for its newest complete step; the closing line then names the next phase's command): verl's
FSDP shards `model_world_size_W_rank_R.pt` plus `fsdp_config.json` and the `huggingface/` folder (config and
tokenizer). The output folder holds `config.json`, `model.safetensors` and the tokenizer files, loads with
`AutoModelForCausalLM.from_pretrained(out)` after `import refine.models`, and is what the next phase takes as
`MODEL_PATH` (it passes the trainer's own model-folder checks before this command returns).

Built on verl's FSDP model merger (`verl.model_merger`), with what it does not do for ReFINE's models:
- registers the models first (`import refine.models`; verl's merger alone fails with "does not recognize this
  architecture");
- keeps each tensor's dtype (`--dtype keep`, the default; verl casts every shard to bf16), or casts the floating
  tensors to `--dtype bf16|fp32`; `config.json` records the dtype the weights are in;
- loads the shards with `weights_only=True`;
- copies the checkpoint's tokenizer files byte for byte and leaves every written file with the normal mode of a new
  file (0666 minus the umask; the safetensors writer leaves 0600).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
import warnings
from collections import Counter
from pathlib import Path

from refine.runs.phase import next_phase_command, phase_of

DTYPES = {"keep": None, "bf16": "bfloat16", "fp32": "float32"}
ACTOR_LAYOUT = "global_step_N/actor (fsdp_config.json, model_world_size_W_rank_R.pt, huggingface/config.json)"
# written by save_pretrained from the config, never copied from the checkpoint's huggingface/ folder
_WRITTEN_FROM_CONFIG = ("config.json", "generation_config.json")
_STEP_DIR = re.compile(r"^global_step_(\d+)$")


class ExportError(ValueError):
    """A checkpoint or output folder that cannot be used (one line: the path, the problem, the fix)."""


def _fail(path, problem: str, fix: str):
    raise ExportError(f"{path}: {problem}. Fix: {fix}")


def find_actor_dir(checkpoint: str | Path) -> Path:
    """The `actor` folder of a checkpoint step folder (given as `global_step_N/actor` or `global_step_N`)."""
    path = Path(checkpoint)
    if not path.exists():
        _fail(path, "does not exist", f"pass a checkpoint step folder, {ACTOR_LAYOUT}")
    if not path.is_dir():
        _fail(path, "is not a folder", f"pass a checkpoint step folder, {ACTOR_LAYOUT}")
    actor = path / "actor" if (path / "actor").is_dir() else path
    if not (actor / "fsdp_config.json").is_file():
        steps = sorted(int(m.group(1)) for p in path.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir())
        if steps:  # a run folder: its newest complete checkpoint (what a resume would load)
            from refine.driver.checkpoints import complete_steps  # torch: only a run folder needs the check

            complete = complete_steps(path)
            if not complete:
                _fail(path, f"is a run folder with no complete checkpoint (steps {steps} are incomplete)",
                      "export a complete step folder, or resume the run until it saves one")
            print(f"refine.export: {path} is a run folder: exporting its newest complete checkpoint, "
                  f"step {complete[0]}", flush=True)
            return find_actor_dir(path / f"global_step_{complete[0]}")
        _fail(actor, "is not a checkpoint step folder (no fsdp_config.json)", f"expected {ACTOR_LAYOUT}")
    world_size = json.loads((actor / "fsdp_config.json").read_text()).get("world_size")
    missing = [f"model_world_size_{world_size}_rank_{r}.pt" for r in range(int(world_size or 0))
               if not (actor / f"model_world_size_{world_size}_rank_{r}.pt").is_file()]
    if not world_size or missing:
        _fail(actor, f"incomplete checkpoint (world_size={world_size}; missing {missing[:3]})",
              "export a complete step folder (the run's latest_checkpointed_iteration.txt names one)")
    if not (actor / "huggingface" / "config.json").is_file():
        _fail(actor, "has no huggingface/config.json (verl writes it next to the shards)", f"expected {ACTOR_LAYOUT}")
    return actor


def check_out_dir(out: str | Path) -> Path:
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        _fail(out, "exists and is not an empty folder", "choose a new output folder (nothing is overwritten)")
    return out


def _merger_class():
    """verl's FSDP merger, loading shards with weights_only=True and keeping their dtypes."""
    import torch
    from torch.distributed.tensor import DTensor
    from verl.model_merger.fsdp_model_merger import FSDPModelMerger, merge_non_dtensor_shards

    class KeepDtypeMerger(FSDPModelMerger):
        target_dtype = None  # torch dtype to cast floating tensors to; None keeps each tensor's own

        def _shard(self, world_size: int, rank: int) -> dict:
            path = Path(self.config.local_dir) / f"model_world_size_{world_size}_rank_{rank}.pt"
            mesh_log = logging.getLogger("torch.distributed.device_mesh")
            level = mesh_log.level
            mesh_log.setLevel(logging.ERROR)  # "unpickling of the DeviceMesh before the PGs": no PG is needed here
            try:
                return torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 - truncated / corrupt / foreign files all mean the same here
                # the first sentence only: torch's next ones advise weights_only=False, never right here
                cause = str(exc).strip().splitlines()[0].split(". ")[0] if str(exc).strip() else "no detail"
                _fail(path, f"unreadable ({type(exc).__name__}: {cause})",
                      "export another step (the run's latest_checkpointed_iteration.txt names a complete one)")
            finally:
                mesh_log.setLevel(level)

        def _load_rank_zero_state_dict(self, world_size: int) -> dict:
            return self._shard(world_size, 0)

        def _load_and_merge_state_dicts(self, world_size, total_shards, mesh_shape, mesh_dim_names):
            if len(mesh_shape) != 1:
                raise NotImplementedError(f"FSDP + TP checkpoints (mesh {mesh_dim_names}) are not supported by verl")
            shards = [self._shard(world_size, rank) for rank in range(total_shards)]
            merged = {}
            for key in list(shards[0]):
                pieces = [shard.pop(key) for shard in shards]
                if isinstance(pieces[0], DTensor):
                    placements = tuple(pieces[0].placements)
                    if mesh_dim_names[0] in ("dp", "ddp"):  # replicated across the data-parallel dimension
                        placements = placements[1:]
                    merged[key] = self._merge_by_placement([p.to_local() for p in pieces], placements[0])
                else:
                    merged[key] = merge_non_dtensor_shards(key, pieces)
            return merged

        def save_hf_model_and_tokenizer(self, state_dict):
            from accelerate import init_empty_weights
            from verl.model_merger.output_validation import validate_hf_model_output
            from verl.utils.transformers_compat import drop_tied_target_keys

            if self.target_dtype is not None:
                state_dict.update({k: v.to(self.target_dtype) for k, v in state_dict.items() if v.is_floating_point()})
            self.saved_dtype = weights_dtype(state_dict)
            with init_empty_weights():
                model = self.get_transformers_auto_model_class().from_config(self.model_config, dtype=self.saved_dtype)
            model = self.patch_model_generation_config(model)
            drop_tied_target_keys(state_dict, model, self.model_config)
            self.n_tensors = len(state_dict)
            model.save_pretrained(self.config.target_dir, state_dict=state_dict)
            validate_hf_model_output(self.config.target_dir)

    return KeepDtypeMerger


def weights_dtype(state_dict: dict):
    """The dtype holding most of the floating-point elements (what `config.json` records)."""
    counts = Counter()
    for tensor in state_dict.values():
        if tensor.is_floating_point():
            counts[tensor.dtype] += tensor.numel()
    return counts.most_common(1)[0][0]


def copy_tokenizer(hf_dir: Path, out: Path) -> list[str]:
    """Copy the checkpoint's tokenizer files (everything in huggingface/ but the config files) byte for byte."""
    copied = []
    for file in sorted(hf_dir.iterdir()):
        if file.is_file() and file.name not in _WRITTEN_FROM_CONFIG:
            shutil.copyfile(file, out / file.name)  # copyfile: a new file's mode, not the source's
            copied.append(file.name)
    return copied


def normal_modes(out: Path) -> None:
    """Give every file in `out` the mode of a newly created file (0666 minus the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    for file in out.iterdir():
        if file.is_file():
            file.chmod(0o666 & ~umask)


def export(checkpoint: str | Path, out: str | Path, dtype: str = "keep") -> str:
    """Write the HF model folder `out` from a checkpoint step folder; returns the one-line summary."""
    if dtype not in DTYPES:
        _fail(checkpoint, f"--dtype {dtype!r} is not one of {sorted(DTYPES)}", "use keep, bf16 or fp32")
    actor = find_actor_dir(checkpoint)
    out = check_out_dir(out)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _fail(out, f"cannot be created ({exc.strerror})", "choose a writable output folder")
    try:
        return _write(actor, out, dtype)
    except BaseException:
        # leave nothing half-written behind (a rerun would refuse the non-empty folder)
        if created:
            shutil.rmtree(out, ignore_errors=True)
        else:
            for file in out.iterdir():
                file.unlink()
        raise


def _write(actor: Path, out: Path, dtype: str) -> str:
    import torch

    with warnings.catch_warnings():  # fla's "Triton is not supported on current platform" on CPU hosts
        warnings.filterwarnings("ignore", message="Triton is not supported")
        import refine.models  # noqa: F401 - registers DeltaNet / GatedDeltaNet / LaCT with the HF Auto classes
    from verl.model_merger.base_model_merger import ModelMergerConfig

    from refine.preflight.model_checks import check_model_dir, check_tokenizer

    config = ModelMergerConfig(operation="merge", backend="fsdp", local_dir=str(actor), target_dir=str(out),
                               hf_model_config_path=str(actor / "huggingface"), trust_remote_code=False)
    merger = _merger_class()(config)
    merger.target_dtype = getattr(torch, DTYPES[dtype]) if DTYPES[dtype] else None
    # verl's merge_and_save, without its prints and upload
    world_size = merger._get_world_size()
    print(f"refine.export: reading {actor} (world size {world_size})", flush=True)
    mesh, mesh_dim_names = merger._extract_device_mesh_info(merger._load_rank_zero_state_dict(world_size), world_size)
    total_shards, mesh_shape = merger._calculate_shard_configuration(mesh, mesh_dim_names)
    merger.save_hf_model_and_tokenizer(
        merger._load_and_merge_state_dicts(world_size, total_shards, mesh_shape, mesh_dim_names))
    tokenizer_files = copy_tokenizer(actor / "huggingface", out)
    normal_modes(out)
    check_model_dir(str(out))  # the checks the next phase runs before Ray
    check_tokenizer(str(out))
    size = sum(f.stat().st_size for f in out.glob("*.safetensors")) / 2**20
    return (f"refine.export: wrote {out}: {merger.n_tensors} tensors, {size:.1f} MiB, "
            f"{str(merger.saved_dtype).removeprefix('torch.')} (--dtype {dtype}), tokenizer "
            f"{', '.join(tokenizer_files)}; from {actor} (world size {world_size}). "
            f"Use it as MODEL_PATH / actor_rollout_ref.model.path")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m refine.export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="checkpoint step folder: <run>/global_step_N/actor or <run>/global_step_N, "
                                           "or the run folder <run> (its newest complete checkpoint)")
    parser.add_argument("out", help="output folder (new or empty)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="keep",
                        help="keep (default): the dtype of the checkpoint's weights; bf16 / fp32: cast to it")
    args = parser.parse_args(argv)
    try:
        print(export(args.checkpoint, args.out, args.dtype), flush=True)
    except ValueError as exc:  # ExportError, or the trainer's ModelCheckError on the written folder
        print(f"refine.export: {exc}", file=sys.stderr)
        sys.exit(2)
    following = _next_command(Path(args.checkpoint), args.out)
    if following:
        print(f"refine.export: next: {following}", flush=True)


def _next_command(checkpoint: Path, out: str) -> str | None:
    """The next phase's demo command on the export, when the checkpoint's run recorded its config."""
    for folder in (checkpoint, *checkpoint.resolve().parents[:2]):  # <run>, <run>/global_step_N[/actor]
        record = folder / "resolved_config.yaml"
        if record.is_file():
            import yaml  # PyYAML (omegaconf's dependency): only a recorded run is read

            return next_phase_command(phase_of(yaml.safe_load(record.read_text()) or {}), out)
    return None


if __name__ == "__main__":
    main()
