"""Pure-PyTorch CPU implementations of the fla 0.6.0 Triton ops (and flash-attn functions) the model families call
(`refine.models.families` lists which family calls which).

They keep fla's signatures and `[B, T, H, D]` layout and are ordinary autograd code (differentiable through
initial and final states). `refine.models.fla_models` installs them into fla when CUDA is absent.
"""

from refine.models.cpu_kernels.activations import swiglu, swiglu_linear
from refine.models.cpu_kernels.attention import flash_attn_func, flash_attn_varlen_func
from refine.models.cpu_kernels.banner import BANNER, announce_once
from refine.models.cpu_kernels.delta_core import l2norm
from refine.models.cpu_kernels.comba import chunk_comba, fused_recurrent_comba
from refine.models.cpu_kernels.delta_rule import chunk_delta_rule, fused_recurrent_delta_rule, recurrent_delta_rule
from refine.models.cpu_kernels.gated_delta_product import chunk_gated_delta_product
from refine.models.cpu_kernels.gated_delta_rule import (
    chunk_gated_delta_rule,
    fused_recurrent_gated_delta_rule,
    gdn_gate,
)
from refine.models.cpu_kernels.gla import chunk_gla, fused_recurrent_gla
from refine.models.cpu_kernels.kda import chunk_kda, fused_recurrent_kda
from refine.models.cpu_kernels.mamba2 import mamba2_forward, rms_norm_gated_ref_forward
from refine.models.cpu_kernels.norms import l2norm_forward, rms_norm_forward, rms_norm_gated_forward, rms_norm_linear
from refine.models.cpu_kernels.pointwise import (
    sigmoid_bwd,
    sigmoid_fwd,
    sqrelu_bwd,
    sqrelu_fwd,
    swish_bwd,
    swish_fwd,
)
from refine.models.cpu_kernels.retention import (
    chunk_retention,
    fused_chunk_retention,
    fused_recurrent_retention,
    parallel_retention,
)
from refine.models.cpu_kernels.rotary import rotary_embedding
from refine.models.cpu_kernels.rwkv7 import (
    chunk_rwkv7,
    fused_addcmul_rwkv7,
    fused_k_rwkv7,
    fused_mul_recurrent_rwkv7,
    fused_recurrent_rwkv7,
    gate_output_correction,
    token_shift,
)
from refine.models.cpu_kernels.short_conv import causal_conv1d, short_conv_forward, short_conv_step
from refine.models.cpu_kernels.simple_gla import chunk_simple_gla, fused_recurrent_simple_gla

__all__ = [
    "BANNER",
    "announce_once",
    "causal_conv1d",
    "chunk_comba",
    "chunk_delta_rule",
    "chunk_gated_delta_product",
    "chunk_gated_delta_rule",
    "chunk_gla",
    "chunk_kda",
    "chunk_retention",
    "chunk_rwkv7",
    "chunk_simple_gla",
    "flash_attn_func",
    "flash_attn_varlen_func",
    "fused_addcmul_rwkv7",
    "fused_chunk_retention",
    "fused_k_rwkv7",
    "fused_mul_recurrent_rwkv7",
    "fused_recurrent_comba",
    "fused_recurrent_delta_rule",
    "fused_recurrent_gated_delta_rule",
    "fused_recurrent_gla",
    "fused_recurrent_kda",
    "fused_recurrent_retention",
    "fused_recurrent_rwkv7",
    "fused_recurrent_simple_gla",
    "gate_output_correction",
    "gdn_gate",
    "l2norm",
    "l2norm_forward",
    "mamba2_forward",
    "parallel_retention",
    "recurrent_delta_rule",
    "rms_norm_forward",
    "rms_norm_gated_forward",
    "rms_norm_gated_ref_forward",
    "rms_norm_linear",
    "rotary_embedding",
    "short_conv_forward",
    "short_conv_step",
    "sigmoid_bwd",
    "sigmoid_fwd",
    "sqrelu_bwd",
    "sqrelu_fwd",
    "swiglu",
    "swiglu_linear",
    "swish_bwd",
    "swish_fwd",
    "token_shift",
]
