"""Pure-PyTorch CPU implementations of the fla 0.6.0 Triton ops that DeltaNet / GatedDeltaNet call.

They keep fla's signatures and `[B, T, H, D]` layout and are ordinary autograd code (differentiable through
initial and final states). `refine.models.fla_models` installs them into fla when CUDA is absent.
"""

from refine.models.cpu_kernels.activations import swiglu, swiglu_linear
from refine.models.cpu_kernels.banner import BANNER, announce_once
from refine.models.cpu_kernels.delta_core import l2norm
from refine.models.cpu_kernels.delta_rule import chunk_delta_rule, fused_recurrent_delta_rule, recurrent_delta_rule
from refine.models.cpu_kernels.gated_delta_rule import (
    chunk_gated_delta_rule,
    fused_recurrent_gated_delta_rule,
    gdn_gate,
)
from refine.models.cpu_kernels.norms import l2norm_forward, rms_norm_forward, rms_norm_gated_forward
from refine.models.cpu_kernels.short_conv import causal_conv1d, short_conv_forward, short_conv_step

__all__ = [
    "BANNER",
    "announce_once",
    "causal_conv1d",
    "chunk_delta_rule",
    "chunk_gated_delta_rule",
    "fused_recurrent_delta_rule",
    "fused_recurrent_gated_delta_rule",
    "gdn_gate",
    "l2norm",
    "l2norm_forward",
    "recurrent_delta_rule",
    "rms_norm_forward",
    "rms_norm_gated_forward",
    "short_conv_forward",
    "short_conv_step",
    "swiglu",
    "swiglu_linear",
]
