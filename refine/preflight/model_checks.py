"""Up-front checks of the model folder and the checkpoint folder (before Ray starts), one line each.

A broken model folder would otherwise fail 1-2 minutes later inside a Ray worker with a long traceback. Checked:
a loadable `config.json` of a registered model type (after `import refine.models`), weights whose headers read and
whose tensor names match the architecture (built on the meta device, so nothing is allocated), a tokenizer that
loads and has an EOS or pad token, and a writable checkpoint folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class ModelCheckError(ValueError):
    """A model or checkpoint folder that cannot be used (the message names the path and the fix)."""


def _fail(path, problem: str, fix: str) -> None:
    raise ModelCheckError(f"actor_rollout_ref.model.path={str(path)!r}: {problem}. Fix: {fix}")


def weight_names(model_dir: Path) -> set[str]:
    """Tensor names of the weights in `model_dir` (safetensors headers, or a torch state dict read with
    weights_only=True); ModelCheckError for a missing or unreadable file."""
    from safetensors import safe_open  # only when a model folder is checked

    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        files = sorted({model_dir / f for f in json.loads(index.read_text())["weight_map"].values()})
    else:
        files = sorted(model_dir.glob("*.safetensors"))
    names: set[str] = set()
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as handle:
                names |= set(handle.keys())
        except Exception as exc:  # noqa: BLE001 - truncated / corrupt files all mean the same to the user
            _fail(model_dir, f"weights file {file.name} is unreadable ({type(exc).__name__}: {exc})",
                  "re-export or re-download the checkpoint")
    if files:
        return names
    bins = sorted(model_dir.glob("pytorch_model*.bin"))
    if not bins:
        _fail(model_dir, "no weights (*.safetensors or pytorch_model*.bin)", "point it at a complete HF model folder")
    import torch  # torch: only for pytorch_model*.bin weights

    for file in bins:
        try:
            names |= set(torch.load(file, map_location="meta", weights_only=True))
        except Exception as exc:  # noqa: BLE001
            _fail(model_dir, f"weights file {file.name} is unreadable ({type(exc).__name__}: {exc})",
                  "re-export or re-download the checkpoint")
    return names


def check_model_dir(model_path: str) -> None:
    """ModelCheckError unless `model_path` holds a loadable config, matching weights (see module docstring)."""
    # torch, transformers and refine.models (fla, seconds): only when a model folder is checked
    import warnings

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with warnings.catch_warnings():  # fla's "Triton is not supported on current platform" on CPU hosts
        warnings.filterwarnings("ignore", message="Triton is not supported")
        import refine.models  # noqa: F401 - registers every family of refine.models.families with the Auto classes
    from refine.models.families import UnknownFamily, family_for, supported_model_types  # (registered above)

    model_dir = Path(model_path)
    if not (model_dir / "config.json").is_file():
        _fail(model_dir, "no config.json", "point it at a local HF model folder (config.json + weights + tokenizer)")
    try:
        config = AutoConfig.from_pretrained(str(model_dir))
    except Exception as exc:  # noqa: BLE001 - unknown model type, bad JSON, ...
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        _fail(model_dir, f"config.json does not load ({message})",
              f"use a config of a ReFINE model family (model_type one of {', '.join(supported_model_types())})")
    try:
        family_for(config.model_type)
    except UnknownFamily as exc:
        _fail(model_dir, str(exc).split("; ")[0], "use a checkpoint of a listed model type, or add its family to "
              "refine/models/families.py (one entry, plus CPU kernels if its ops are new)")
    names = weight_names(model_dir)
    with torch.device("meta"):
        expected = set(AutoModelForCausalLM.from_config(config).state_dict())
    if getattr(config, "tie_word_embeddings", False):
        expected = {n for n in expected if not n.startswith("lm_head.")}
        names = {n for n in names if not n.startswith("lm_head.")}
    missing, unexpected = sorted(expected - names), sorted(names - expected)
    if missing or unexpected:
        _fail(model_dir, f"the weights do not match the {config.model_type} architecture in config.json "
              f"({len(missing)} missing, e.g. {missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]})",
              "use the config.json that belongs to these weights")


def check_tokenizer(tokenizer_path: str) -> None:
    """ModelCheckError unless a tokenizer loads from `tokenizer_path` and has an EOS or a pad token."""
    # transformers: only when a tokenizer is checked
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path))
    except Exception as exc:  # noqa: BLE001 - sentencepiece / json errors: the user needs the path, not the cause
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        _fail(tokenizer_path, f"no tokenizer loads from this folder ({message})",
              "copy the tokenizer files (tokenizer.json / tokenizer_config.json) of the model into it, or set "
              "actor_rollout_ref.model.tokenizer_path")
    finally:
        hf_logging.set_verbosity(verbosity)
    if tokenizer.eos_token_id is None and tokenizer.pad_token_id is None:
        _fail(tokenizer_path, "the tokenizer has neither an EOS nor a pad token (rollout padding needs one)",
              "set eos_token in its tokenizer_config.json")


def check_writable(key: str, folder: str) -> None:
    """ValueError unless `folder` (or its nearest existing parent) can be written."""
    probe = Path(folder)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        what = "is not a folder" if not probe.is_dir() else "is not writable"
        raise ModelCheckError(f"{key}={folder!r}: {probe} {what}, so no checkpoint could be saved. Fix: "
                              "choose a writable folder")
