"""Model folders in the real checkpoints' layouts load through the trainer's own path, unchanged.

`tests/trainer/layouts.py` writes tiny models with the real config keys: fla-hub/delta_net-1.3B-100B (DeltaNet,
bf16, `torch_dtype`, no `num_attention_heads`, fused flags on, Llama tokenizer without pad) and the LaCT-760M
training config (`lact_swiglu`, fp32). Fast: the pre-Ray preparation (`refine.main.prepare`: model folder, weights,
tokenizer checks), `AutoModelForCausalLM.from_pretrained` after `import refine.models` (never trust_remote_code),
pad = EOS in the trainer's tokenizer. Slow (Ray): one training step through the FSDP worker on each layout, then
`refine.export` of that checkpoint reloads with the logits of the checkpoint's own weights.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest
import torch

_spec = importlib.util.spec_from_file_location("refine_test_layouts", Path(__file__).with_name("layouts.py"))
layouts = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(layouts)

WRITERS = {"fla_hub_deltanet": layouts.write_fla_hub_deltanet, "lact_760m": layouts.write_lact_760m}
SOURCE_KEYS = {"fla_hub_deltanet": layouts.FLA_HUB_DELTANET_1_3B, "lact_760m": layouts.LACT_760M}
STORED_DTYPE = {"fla_hub_deltanet": torch.bfloat16, "lact_760m": torch.float32}  # the configs' torch_dtype
HEADS_KEY = {"fla_hub_deltanet": "num_heads", "lact_760m": "num_attn_heads"}
# On CPU only: fla's fused cross-entropy is a Triton kernel (the NTP loss passes labels into the model); the folder
# itself stays unchanged, the run overrides the flag as the README says for CPU runs.
CPU_RUN = {"fla_hub_deltanet": ["+actor_rollout_ref.model.override_config.fuse_cross_entropy=False"],
           "lact_760m": []}
WORLD_SIZE = {"fla_hub_deltanet": 1, "lact_760m": 2}  # two FSDP ranks: the export concatenates real shards


@pytest.fixture(scope="module", params=list(WRITERS))
def layout(request, tmp_path_factory):
    """(name, folder, reference model holding exactly the stored weights)."""
    folder = tmp_path_factory.mktemp(request.param)
    return request.param, folder, WRITERS[request.param](folder)


def test_the_folder_has_the_real_config_keys_and_no_remote_code(layout):
    name, folder, _ = layout
    written = json.loads((folder / "config.json").read_text())
    assert set(written) == set(SOURCE_KEYS[name]) and "auto_map" not in written
    assert "num_attention_heads" not in written and "dtype" not in written  # as published: older key names
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "model.safetensors", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]


def test_the_trainers_preparation_accepts_the_folder(layout, compose_config, tmp_path):
    """`refine.main.prepare` is what runs before Ray: the model folder, weights and tokenizer checks included."""
    from refine.preflight.prepare import prepare

    _, folder, _ = layout
    config = compose_config([f"actor_rollout_ref.model.path={folder}", f"trainer.default_local_dir={tmp_path}"])
    prepare(config)
    assert config.actor_rollout_ref.model.path == str(folder)
    assert config.actor_rollout_ref.model.trust_remote_code is False


def test_from_pretrained_loads_every_weight_in_the_stored_dtype(layout):
    from transformers import AutoModelForCausalLM

    import refine.models  # noqa: F401

    name, folder, reference = layout
    model, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set() and info["mismatched_keys"] == set()
    assert model.dtype == STORED_DTYPE[name]
    # verl's worker reads the attention-style names; they follow the model's own head count
    heads = json.loads((folder / "config.json").read_text())[HEADS_KEY[name]]
    assert model.config.num_attention_heads == model.config.num_key_value_heads == heads
    ids = torch.randint(3, layouts.TINY_VOCAB, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model.float().eval()(ids).logits, reference(ids).logits)


def test_the_trainers_tokenizer_pads_with_eos_when_the_tokenizer_has_none(layout):
    from omegaconf import OmegaConf
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from refine.driver.task_runner import load_tokenizer

    _, folder, _ = layout
    plain = AutoTokenizer.from_pretrained(folder)
    assert type(plain).__name__ == "LlamaTokenizer" and plain.pad_token is None  # as shipped: no pad
    text = "The for statement iterates over the items of any sequence."
    assert plain(text)["input_ids"] == Tokenizer.from_file(str(folder / "tokenizer.json")).encode(text).ids
    assert plain(text)["input_ids"][0] == 1  # BOS, as the Llama tokenizer adds it

    tokenizer = load_tokenizer(OmegaConf.create({"actor_rollout_ref": {"model": {"path": str(folder)}}}))
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("</s>", 2)  # tokenizer_config: eos </s>, id 2


def checkpoint_weights(actor: Path, world_size: int) -> dict:
    """The whole tensors of an FSDP checkpoint by the definition of a `Shard(d)` placement: the ranks' local parts
    concatenated along d in rank order."""
    from torch.distributed.tensor import Shard

    shards = [torch.load(actor / f"model_world_size_{world_size}_rank_{r}.pt", map_location="cpu", weights_only=True)
              for r in range(world_size)]
    whole = {}
    for key, first in shards[0].items():
        (placement,) = first.placements
        assert isinstance(placement, Shard), (key, placement)
        whole[key] = torch.cat([shard[key].to_local() for shard in shards], dim=placement.dim)
    split = [k for k in whole if all(shard[k].to_local().numel() for shard in shards)]
    assert world_size == 1 or split, "no tensor is spread over the ranks"
    return whole


@pytest.mark.slow
def test_one_training_step_through_the_worker_then_export_reloads_the_checkpoint(layout, make_trainer, tmp_path):
    from transformers import AutoModelForCausalLM

    import refine.models  # noqa: F401
    from refine.export import export

    name, folder, reference = layout
    run_dir = tmp_path / "run"
    world_size = WORLD_SIZE[name]
    trainer = make_trainer([f"actor_rollout_ref.model.path={folder}", "trainer.total_training_steps=1",
                            "trainer.save_freq=1", f"trainer.default_local_dir={run_dir}",
                            f"trainer.n_gpus_per_node={world_size}", *CPU_RUN[name]])
    trainer.fit()
    step = next(r for r in trainer.history if r.get("training/global_step") == 1)
    assert torch.isfinite(torch.tensor(step["actor/sft_loss_ttt"])) and step["actor/grad_norm_ttt"] > 0

    actor = run_dir / "global_step_1" / "actor"
    out = tmp_path / "export"
    summary = export(actor, out)
    assert summary.startswith(f"refine.export: wrote {out}")
    own = checkpoint_weights(actor, world_size)
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert loaded.dtype == torch.float32  # the trainer's fp32 weights, kept (the source folder was bf16 for fla)
    exported = loaded.state_dict()
    assert set(exported) == set(own) and all(torch.equal(exported[k], own[k]) for k in own)
    assert any(not torch.equal(own[k], v.float()) for k, v in reference.state_dict().items())  # it trained
    reference = copy.deepcopy(reference)  # the module's fixture stays as written
    reference.load_state_dict(own)
    ids = torch.randint(3, layouts.TINY_VOCAB, (2, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, reference(ids).logits)
