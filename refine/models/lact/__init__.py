"""LaCT (large-chunk test-time training) causal LM, registered with the HF Auto classes on import.

Public API: `LaCTConfig` (model_type "lact_swiglu"), `LaCTModel`, `LaCTForCausalLM`, `LaCTCache`, and
`tiny_lact_config()` for CPU tests.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from refine.models.lact.cache import LaCTCache
from refine.models.lact.configuration_lact import LaCTConfig, LaCTSWIGLUConfig
from refine.models.lact.modeling_lact import LaCTBlock, LaCTForCausalLM, LaCTModel, LaCTPreTrainedModel

AutoConfig.register(LaCTConfig.model_type, LaCTConfig, exist_ok=True)
AutoModel.register(LaCTConfig, LaCTModel, exist_ok=True)
AutoModelForCausalLM.register(LaCTConfig, LaCTForCausalLM, exist_ok=True)


def tiny_lact_config(vocab_size: int = 512, **overrides) -> LaCTConfig:
    """A 2-layer, 64-wide LaCT config that runs in milliseconds on CPU.

    Chunk 16 and window 24 are small so that short test sequences cross chunk boundaries (fast-weight updates)
    and the attention window. Low-rank W0/W2 and momentum are on, as in the 760M checkpoint.
    """
    kwargs = dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attn_heads=4,
        num_lact_heads=2,
        lact_chunk_size=16,
        window_size=24,
        w0_w2_low_rank=4,
        use_momentum=True,
        rope_theta=1e6,
        max_position_embeddings=2048,
        intermediate_size=128,
        initializer_range=0.02,
        vocab_size=vocab_size,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
        tie_word_embeddings=False,
    )
    kwargs.update(overrides)
    return LaCTConfig(**kwargs)


__all__ = [
    "LaCTBlock",
    "LaCTCache",
    "LaCTConfig",
    "LaCTForCausalLM",
    "LaCTModel",
    "LaCTPreTrainedModel",
    "LaCTSWIGLUConfig",
    "tiny_lact_config",
]
