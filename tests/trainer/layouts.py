"""Model folders in the layouts of the real checkpoints, with tiny sizes (helpers for the tests, not a test module).

- `write_fla_hub_deltanet`: `fla-hub/delta_net-1.3B-100B` style: the config.json keys of fla's `DeltaNetConfig`
  as that checkpoint publishes them (written by an older fla and transformers 4.x: `torch_dtype`, no
  `num_attention_heads`, fused norm / SwiGLU / cross-entropy on), bf16 safetensors, a Llama tokenizer
  (`tokenizer_class: LlamaTokenizer`, byte-fallback BPE with a Metaspace pre-tokenizer, bos 1, eos 2, no pad).
- `write_lact_760m`: `YunjinZhang/lact_llm` (760M) style: the `lact_swiglu` keys of the 760M training config
  (spec lact-model.md §2, "mom" column, including its unused `attention_bias`), fp32 safetensors (FLAME's export
  dtype), the same tokenizer.
Only the sizes are shrunk (`TINY_*`); every other key keeps the real model's value. The files are written
directly (json + safetensors), not by `save_pretrained`, so nothing of the current stack leaks into them.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

FLA_HUB_DELTANET_1_3B = {
    "architectures": ["DeltaNetForCausalLM"],
    "attn": None,
    "attn_mode": "chunk",
    "bos_token_id": 1,
    "conv_size": 4,
    "eos_token_id": 2,
    "expand_k": 1,
    "expand_v": 1,
    "fuse_cross_entropy": True,
    "fuse_norm": True,
    "fuse_swiglu": True,
    "hidden_act": "swish",
    "hidden_ratio": 4,
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": None,
    "max_position_embeddings": 2048,
    "model_type": "delta_net",
    "norm_eps": 1e-06,
    "num_heads": 16,
    "num_hidden_layers": 24,
    "qk_activation": "silu",
    "qk_norm": "l2",
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.45.2",
    "use_beta": True,
    "use_cache": True,
    "use_gate": False,
    "use_output_norm": True,
    "use_short_conv": True,
    "vocab_size": 32000,
}
TINY_DELTANET = {"hidden_size": 64, "num_heads": 2, "num_hidden_layers": 2}

LACT_760M = {
    "architectures": ["LaCTForCausalLM"],
    "attention_bias": False,
    "attn_qk_norm": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "fuse_cross_entropy": True,
    "fuse_norm": True,
    "fw_init_gain": 0.5,
    "hidden_act": "swish",
    "hidden_size": 1536,
    "initializer_range": 0.02,
    "inter_multi": 1,
    "lact_chunk_size": 2048,
    "learnable_ttt_scale": True,
    "lr_dim": 1,
    "lr_parameterization": "mamba",
    "max_position_embeddings": 32768,
    "model_type": "lact_swiglu",
    "norm_eps": 1e-06,
    "num_attn_heads": 24,
    "num_hidden_layers": 24,
    "num_lact_heads": 4,
    "qkv_bias": False,
    "qkv_silu": True,
    "rope_theta": 1000000,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "transformers_version": "4.51.3",
    "use_cache": True,
    "use_momentum": True,
    "use_muon": False,
    "vocab_size": 32000,
    "w0_w2_low_rank": 32,
    "window_size": 2048,
}
# head dims stay even (RoPE); chunk and window small so a few dozen tokens cross both
TINY_LACT = {"hidden_size": 64, "num_attn_heads": 4, "num_lact_heads": 2, "num_hidden_layers": 2,
             "lact_chunk_size": 16, "window_size": 24, "w0_w2_low_rank": 4}
TINY_VOCAB = 512

LLAMA_TOKENIZER_CONFIG = {  # the Llama-2 tokenizer_config.json the fla-hub checkpoints ship (no pad token)
    "add_bos_token": True,
    "add_eos_token": False,
    "bos_token": "<s>",
    "clean_up_tokenization_spaces": False,
    "eos_token": "</s>",
    "legacy": False,
    "model_max_length": 1000000000000000019884624838656,
    "pad_token": None,
    "padding_side": "left",
    "sp_model_kwargs": {},
    "tokenizer_class": "LlamaTokenizer",
    "unk_token": "<unk>",
}


@functools.cache  # trained once per process: both layouts ship the same tokenizer
def llama_style_tokenizer_json(vocab_size: int = TINY_VOCAB) -> str:
    """A Llama-pipeline tokenizer.json (BPE with byte fallback, Metaspace "▁", unk 0 / bos 1 / eos 2, 256 byte
    tokens, BOS prepended) trained on the bundled corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from refine.models.tiny import SPECIAL_TOKENS, corpus_texts

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(content=" ", left=1)])
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS + byte_tokens,
                                  show_progress=False)
    tokenizer.train_from_iterator(corpus_texts(), trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                             special_tokens=[("<s>", 1)])
    return tokenizer.to_str()


def write_llama_tokenizer(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(llama_style_tokenizer_json())
    (folder / "tokenizer_config.json").write_text(json.dumps(LLAMA_TOKENIZER_CONFIG, indent=2))
    (folder / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, indent=2))


def _write(folder: Path, config: dict, dtype_name: str, seed: int):
    """config.json exactly as given, the weights of a seeded model built from it in `dtype_name`, the tokenizer.
    Returns the model (fp32, eval mode) whose weights were written."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    import refine.models  # noqa: F401

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=torch.float32)
    dtype = getattr(torch, dtype_name)
    weights = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    model.load_state_dict({k: v.float() for k, v in weights.items()})  # the reference: exactly the stored values
    write_llama_tokenizer(folder)
    return model.eval()


def write_fla_hub_deltanet(folder: Path, seed: int = 0):
    return _write(folder, {**FLA_HUB_DELTANET_1_3B, **TINY_DELTANET, "vocab_size": TINY_VOCAB}, "bfloat16", seed)


def write_lact_760m(folder: Path, seed: int = 0):
    return _write(folder, {**LACT_760M, **TINY_LACT, "vocab_size": TINY_VOCAB}, "float32", seed)
