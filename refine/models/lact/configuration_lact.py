"""Configuration of the LaCT causal LM (HF `model_type = "lact_swiglu"`).

Field names and defaults follow the upstream `LaCTSWIGLUConfig` (spec lact-model.md §2) so a published
`config.json` loads unchanged. Project additions are prefixed `lact_` (plus `mask_pad_labels`) and documented below.
"""

from __future__ import annotations

import math
import warnings

from transformers.configuration_utils import PreTrainedConfig

_SUPPORTED_ACTS = ("swish", "silu")


class LaCTConfig(PreTrainedConfig):
    """LaCT (large-chunk test-time training) language model config.

    Upstream fields: see spec lact-model.md §2 (same names, same defaults).

    Project flags (deliberate, documented deviations; all default to the official behaviour):
        lact_exact_padding: if True, the model makes every row's outputs independent of its padding: pads are removed
            before the fast-weight updates, and RoPE positions, chunk boundaries and the attention window are counted
            over real tokens only. Default False = official behaviour (spec Q7: the TTT branch ignores the mask).
        lact_backend: "auto" uses flash-attn varlen for the attention branch when the tensors are on CUDA in
            fp16/bf16 and flash-attn is installed, else pure PyTorch; "torch" forces pure PyTorch.
        mask_pad_labels: ReFINE's NTP variant (official-behaviour §5.1): shifted labels are also ignored where
            `attention_mask == 0`. False = upstream LaCT (only -100 labels are ignored).

    `num_attention_heads` / `num_key_value_heads` mirror `num_attn_heads` (read by verl's monkey patch).
    """

    model_type = "lact_swiglu"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        hidden_size: int = 2048,
        num_hidden_layers: int = 24,
        num_attn_heads: int = 32,
        num_lact_heads: int = 4,
        inter_multi: float = 1,
        qkv_bias: bool = False,
        attn_qk_norm: bool = False,
        lact_chunk_size: int = 2048,
        use_muon: bool = False,
        lr_dim: int = 1,
        qkv_silu: bool = True,
        no_v_silu: bool = False,
        lr_parameterization: str = "mamba",
        learnable_ttt_scale: bool = True,
        use_momentum: bool = True,
        ttt_loss_type: str = "dot_product",
        ttt_prenorm: bool = False,
        ttt_nope: bool = False,
        w0_w2_low_rank: int = -1,
        window_size: int = 2048,
        rope_theta: float = 10000.0,
        max_position_embeddings: int = 2048,
        hidden_ratio: int | None = 4,
        intermediate_size: int | None = None,
        hidden_act: str = "swish",
        initializer_range: float = 0.006,
        elementwise_affine: bool | None = True,
        norm_eps: float = 1e-6,
        use_cache: bool = True,
        pad_token_id: int | None = None,
        bos_token_id: int = 1,
        eos_token_id: int = 2,
        tie_word_embeddings: bool = False,
        fuse_norm: bool = True,
        last_layer_fuse_norm: bool = True,
        fuse_swiglu: bool = True,
        fuse_cross_entropy: bool = True,
        vocab_size: int = 32000,
        fw_init_gain: float = 0.5,
        use_fused_kernel: bool = False,
        fp32_states: bool = False,
        lact_exact_padding: bool = False,
        lact_backend: str = "auto",
        mask_pad_labels: bool = True,
        **kwargs,
    ):
        # verl reads these attention-style names; they are derived, never independent settings.
        for alias in ("num_attention_heads", "num_key_value_heads"):
            given = kwargs.pop(alias, None)
            if given is not None and given != num_attn_heads:
                raise ValueError(f"LaCTConfig: {alias}={given} must equal num_attn_heads={num_attn_heads}")
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attn_heads = num_attn_heads
        self.num_lact_heads = num_lact_heads
        self.inter_multi = inter_multi
        self.qkv_bias = qkv_bias
        self.attn_qk_norm = attn_qk_norm
        self.lact_chunk_size = lact_chunk_size
        self.use_muon = use_muon
        self.lr_dim = lr_dim
        self.qkv_silu = qkv_silu
        self.no_v_silu = no_v_silu
        self.lr_parameterization = lr_parameterization
        self.learnable_ttt_scale = learnable_ttt_scale
        self.use_momentum = use_momentum
        self.ttt_loss_type = ttt_loss_type
        self.ttt_prenorm = ttt_prenorm
        self.ttt_nope = ttt_nope
        self.w0_w2_low_rank = w0_w2_low_rank
        self.window_size = window_size
        self.rope_theta = float(rope_theta)
        self.max_position_embeddings = max_position_embeddings
        self.hidden_ratio = hidden_ratio
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.initializer_range = initializer_range
        self.elementwise_affine = elementwise_affine
        self.norm_eps = norm_eps
        self.use_cache = use_cache
        self.fuse_norm = fuse_norm
        self.last_layer_fuse_norm = last_layer_fuse_norm
        self.fuse_swiglu = fuse_swiglu
        self.fuse_cross_entropy = fuse_cross_entropy
        self.vocab_size = vocab_size
        self.fw_init_gain = fw_init_gain
        self.use_fused_kernel = use_fused_kernel
        self.fp32_states = fp32_states
        self.lact_exact_padding = lact_exact_padding
        self.lact_backend = lact_backend
        self.mask_pad_labels = mask_pad_labels
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        self.validate_lact()

    # Derived sizes -------------------------------------------------------------------------------------------
    @property
    def num_attention_heads(self) -> int:
        return self.num_attn_heads

    @property
    def num_key_value_heads(self) -> int:
        return self.num_attn_heads

    @property
    def head_dim(self) -> int:
        """Attention head size."""
        return self.hidden_size // self.num_attn_heads

    @property
    def fw_head_dim(self) -> int:
        """Fast-weight (TTT) head size d = d_in = d_out."""
        return self.hidden_size // self.num_lact_heads

    @property
    def fw_hidden_dim(self) -> int:
        """Fast-weight hidden size d_h = int(d · inter_multi) (truncated, as upstream)."""
        return int(self.fw_head_dim * self.inter_multi)

    @property
    def mlp_intermediate_size(self) -> int:
        """MLP width: `intermediate_size`, or fla's GatedMLP rule 256·ceil(int(D·ratio·2/3)/256)."""
        if self.intermediate_size is not None:
            return self.intermediate_size
        ratio = 4 if self.hidden_ratio is None else self.hidden_ratio
        return 256 * math.ceil(int(self.hidden_size * ratio * 2 / 3) / 256)

    def validate_lact(self) -> None:
        """Fail early, naming the field, on settings the model cannot run."""
        positive = ("hidden_size", "num_hidden_layers", "num_attn_heads", "num_lact_heads", "lact_chunk_size",
                    "window_size", "vocab_size")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"LaCTConfig: {name}={value!r} must be a positive integer")
        if self.hidden_size % self.num_attn_heads:
            raise ValueError(
                f"LaCTConfig: hidden_size={self.hidden_size} is not divisible by num_attn_heads={self.num_attn_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"LaCTConfig: attention head_dim={self.head_dim} must be even for rotary embeddings")
        if self.hidden_size % self.num_lact_heads:
            raise ValueError(
                f"LaCTConfig: hidden_size={self.hidden_size} is not divisible by num_lact_heads={self.num_lact_heads}"
            )
        if isinstance(self.inter_multi, bool) or not isinstance(self.inter_multi, (int, float)) \
                or self.fw_hidden_dim <= 0:
            raise ValueError(
                f"LaCTConfig: inter_multi={self.inter_multi!r} must be a number with int(fw_head_dim*inter_multi) "
                f"= int({self.fw_head_dim}*{self.inter_multi}) > 0"
            )
        # Upstream multiplies K (width d_in) and the hidden activation (width d_h) by the same rate tensor, so a
        # per-channel rate only broadcasts when lr_dim = d_in = d_h; any other value crashes upstream.
        lr_dim_ok = isinstance(self.lr_dim, int) and not isinstance(self.lr_dim, bool)
        if not lr_dim_ok or self.lr_dim not in (1, self.fw_head_dim):
            raise ValueError(
                f"LaCTConfig: lr_dim={self.lr_dim!r} must be 1 (one rate per matrix) or fw_head_dim="
                f"{self.fw_head_dim} (one rate per input channel)"
            )
        if self.lr_dim > 1 and self.fw_hidden_dim != self.fw_head_dim:
            raise ValueError(
                f"LaCTConfig: lr_dim={self.lr_dim} (per-channel rates) needs inter_multi=1, but inter_multi="
                f"{self.inter_multi} gives fast-weight hidden {self.fw_hidden_dim} != {self.fw_head_dim}"
            )
        if self.lr_parameterization != "mamba":
            raise ValueError(f"LaCTConfig: lr_parameterization={self.lr_parameterization!r}; only 'mamba' exists")
        if self.ttt_loss_type != "dot_product":
            raise ValueError(f"LaCTConfig: ttt_loss_type={self.ttt_loss_type!r}; only 'dot_product' exists")
        if self.hidden_act not in _SUPPORTED_ACTS:
            raise ValueError(f"LaCTConfig: hidden_act={self.hidden_act!r}; supported: {_SUPPORTED_ACTS}")
        if self.lact_backend not in ("auto", "torch"):
            raise ValueError(f"LaCTConfig: lact_backend={self.lact_backend!r}; expected 'auto' or 'torch'")
        if self.use_fused_kernel:
            # The fused Triton path differs by design (joint Muon, eps inside the sqrt); we run the non-fused math.
            warnings.warn(
                "LaCTConfig: use_fused_kernel=True is not implemented; the non-fused fast-weight path is used",
                stacklevel=2,
            )


# Upstream class name, for code that refers to it.
LaCTSWIGLUConfig = LaCTConfig
