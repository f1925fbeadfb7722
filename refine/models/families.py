"""The model families ReFINE runs, one entry each: the only place in `refine/` that names a model type.

Every consumer reads this table: `refine.models.fla_models` (head-name aliases verl reads, CPU stand-ins),
`refine.models.state_branching` (what a fast-NSP branch carries), `refine.preflight.memory_estimate` (state sizes),
`refine.preflight.model_checks` / `fast_mode` (refusals before Ray), `refine.models.tiny` (tiny CPU configs), the
tests (`tests/models/test_families.py`, `tests/trainer/test_fast_nsp.py`) and `scripts/bench/nsp_step.py --models`.

Adding a family is one `Family(...)` in `FAMILIES`:
- `name`, `model_types` (HF `config.model_type` values), `config_class` ("module:Class", imported on demand);
- `heads`: the config attributes verl's `num_attention_heads` / `num_key_value_heads` read (first non-None wins),
  or () when the config already has those names;
- `cpu_kernels`: (fla module, attribute path, name in `refine.models.cpu_kernels`) for each fla Triton op its layer
  binds by name. New ops get a stand-in in `refine/models/cpu_kernels/<op>.py` (fla's signature, ordinary autograd,
  initial / final states, `cu_seqlens`) checked against fla's naive reference in
  `tests/models/test_<op>_kernels.py`, exported from `cpu_kernels/__init__.py`. `FLA_SHARED_KERNELS` (short
  convolution, norms, swiglu, fla's attention layer of hybrid configs) are installed for every family;
- `state`: how its decoding cache branches in the fast NSP mode (`FLA_CACHE`: fla's per-layer dict, `state_keys`
  name what a layer keeps; `LACT_CACHE`; `NO_BRANCHING` refuses the fast mode), and `fast_refusal` for configs of a
  branchable family that still cannot (None: always fine);
- `state_sizes(config, block)`: (s_32, s_p) elements per block and row of the branched state, fp32 and compute
  dtype, and `kv_per_token(config)`: cached attention keys/values per token and block (docs in
  `refine/preflight/memory_estimate.py`);
- `tiny`: keyword arguments of a 2-layer, 64-wide CPU config (special ids and vocabulary are added by
  `refine.models.tiny.tiny_config`), or `tiny_builder` ("module:function") for a family that ships its own.
Then `pytest tests/models/test_families.py tests/trainer/test_fast_nsp.py -k <name>` runs it through both modes.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

# the family of the embedded demo model (data/demo/model) and of the tests' default tiny model
DEMO_FAMILY = "delta_net"

FLA_CACHE, LACT_CACHE, KV_CACHE, NO_BRANCHING = "fla_cache", "lact_cache", "kv_cache", "none"

# (fla module, attribute path in it, replacement in refine.models.cpu_kernels), fla 0.6.0. Layers bind ops by name
# at import time, so the names inside the layer modules are what must change.
FLA_SHARED_KERNELS: tuple[tuple[str, str, str], ...] = (
    ("fla.modules.causal_conv1d.ops", "ShortConvolution.forward", "short_conv_forward"),
    ("fla.modules.causal_conv1d.ops", "ShortConvolution.step", "short_conv_step"),
    ("fla.modules.norm.layernorm", "RMSNorm.forward", "rms_norm_forward"),
    ("fla.modules.norm.fused_norm_gate", "FusedRMSNormGated.forward", "rms_norm_gated_forward"),
    ("fla.modules.norm.l2norm", "L2Norm.forward", "l2norm_forward"),
    ("fla.modules.mlp", "swiglu", "swiglu"),
    ("fla.modules.mlp", "swiglu_linear", "swiglu_linear"),
)

# fla's softmax-attention layer (hybrid configs, `attn={"layers": [...]}`) imports flash-attn, absent on CPU
FLA_ATTENTION_KERNELS: tuple[tuple[str, str, str], ...] = (
    ("fla.layers.attn", "flash_attn_func", "flash_attn_func"),
    ("fla.layers.attn", "flash_attn_varlen_func", "flash_attn_varlen_func"),
    ("fla.modules.rotary.ops", "rotary_embedding", "rotary_embedding"),
)

# fla's Triton `swish` / `sigmoid` (GLA's output gate via ACT2FN, HGRN2's queries) call these two halves at run
# time, so replacing them covers every name the function object is bound to
SWISH_KERNELS: tuple[tuple[str, str, str], ...] = tuple(
    ("fla.modules.activations.ops", name, name) for name in ("swish_fwd", "swish_bwd", "sigmoid_fwd", "sigmoid_bwd"))


def gla_kernels(layer_module: str) -> tuple[tuple[str, str, str], ...]:
    """GLA's ops as a layer module binds them, and in fla.ops.gla (GLA and HGRN2 share them)."""
    return tuple((module, op, op) for module in (layer_module, "fla.ops.gla")
                 for op in ("chunk_gla", "fused_recurrent_gla"))


# fla extensions installed on every device: (fla module, attribute, "module:function" replacing it). fla's
# attention layer unpads only a prefill or one decoding token; a fast-NSP branch continues a masked cache over k + 1
FLA_EXTENSIONS: tuple[tuple[str, str, str], ...] = (
    ("fla.layers.attn", "unpad_input", "refine.models.attention_continuation:unpad_input"),
)

# every tiny fla config: unfused norms / CE (fla's fused ones are Triton-only), untied embeddings
FLA_TINY = dict(hidden_size=64, num_hidden_layers=2, num_heads=2, fuse_norm=False, fuse_swiglu=False,
                fuse_cross_entropy=False, fuse_linear_cross_entropy=False, tie_word_embeddings=False)


def _no_state(config, block) -> tuple[int, int]:
    return 0, 0


def _qkv_conv(layer) -> int:
    """Three short-convolution caches (q, k, v) of W - 1 columns, in the compute dtype."""
    return (layer.key_dim * 2 + layer.value_dim) * (layer.conv_size - 1) if layer.use_short_conv else 0


def _delta_state(config, block) -> tuple[int, int]:
    """DeltaNet: state [H, d_k, d_v] fp32, and the q/k/v convolution caches."""
    layer = block.attn
    return layer.num_heads * layer.head_k_dim * layer.head_v_dim, _qkv_conv(layer)


def _gated_delta_state(config, block) -> tuple[int, int]:
    """GatedDeltaNet: state [H_v, d_k, d_v] fp32 (value heads may outnumber key heads), and the convolution
    caches."""
    layer = block.attn
    return layer.num_v_heads * layer.head_k_dim * layer.head_v_dim, _qkv_conv(layer)


def _mamba2_state(config, block) -> tuple[int, int]:
    """Mamba2: SSM state [H, head_dim, state_size] fp32; one convolution cache over x, B, C of W columns."""
    mixer = block.mixer
    return mixer.num_heads * mixer.head_dim * mixer.ssm_state_size, mixer.conv_dim * mixer.conv_kernel_size


def _gla_state(config, block) -> tuple[int, int]:
    """GLA / RetNet: state [H, d_k, d_v] fp32, and the q/k/v convolution caches when `use_short_conv`."""
    layer = block.attn
    return layer.num_heads * layer.head_k_dim * layer.head_v_dim, _qkv_conv(layer)


def _hgrn2_state(config, block) -> tuple[int, int]:
    """HGRN2: state [H, expand_ratio, d_head] fp32; the q / forget / input convolution caches when `use_short_conv`."""
    layer = block.attn
    conv = (layer.forget_dim * 2 + layer.input_dim) * (layer.conv_size - 1) if layer.use_short_conv else 0
    return layer.num_heads * layer.head_f_dim * layer.head_i_dim, conv


def _delta_product_state(config, block) -> tuple[int, int]:
    """Gated DeltaProduct: state [H_v, d_k, d_v] fp32; its k / v convolutions run over num_householder keys and
    values per token."""
    layer = block.attn
    n = config.num_householder
    conv = (layer.key_dim * (1 + n) + layer.value_dim * n) * (layer.conv_size - 1) if layer.use_short_conv else 0
    return layer.num_v_heads * layer.head_k_dim * layer.head_v_dim, conv


def _rwkv7_state(config, block) -> tuple[int, int]:
    """RWKV-7: state [H, d_k, d_v] fp32; the token-shift caches of its time mix and channel mix (one hidden vector
    each)."""
    layer = block.attn
    return layer.num_heads * layer.head_dim * layer.head_v_dim, 2 * config.hidden_size


def _hybrid_kv_per_token(config) -> int:
    """Keys and values per token and block of a hybrid fla config's `attn` layers (compute dtype), averaged over the
    blocks: what a branch carries per cached token beyond the recurrent state (0 without `attn`)."""
    attn = getattr(config, "attn", None)
    specs = attn if isinstance(attn, list) else [attn] if attn else []
    per_layer = sum(len(s["layers"]) * 2 * s["num_kv_heads"] * (config.hidden_size // s["num_heads"])
                    for s in specs)
    return per_layer // config.num_hidden_layers


def _decoder_kv_per_token(config) -> int:
    """A transformers decoder: every layer caches keys and values of its key/value heads."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_key_value_heads * head_dim


def _lact_state(config, block) -> tuple[int, int]:
    """LaCT: three fast-weight matrices per head (twice with momentum); the window's keys/values and the open
    chunk."""
    layer = block.attn
    weights = 3 * layer.num_fw_heads * layer.fw_head_dim * layer.fw_hidden_dim
    return (weights * (2 if config.use_momentum else 1),
            2 * config.hidden_size * (int(config.window_size) + int(config.lact_chunk_size)))


def _lact_refusal(config: Mapping) -> str | None:
    if config.get("lact_exact_padding"):
        return None
    return ("with LaCT's official padding the re-left-padded prefixes shift chunk boundaries and RoPE positions "
            "(spec Q7/Q18), so a branch off the document's state would not equal the faithful rollout; set "
            "actor_rollout_ref.model.override_config.lact_exact_padding=True")


def _rotary_refusal(config: Mapping) -> str | None:
    return ("its retention rotates queries and keys by absolute position (RoPE), and a branched cache carries one "
            "position counter for all rows (fla's Cache), so a row continuing from its own cut would read the wrong "
            "positions (the faithful mode runs it)")


def _rwkv7_refusal(config: Mapping) -> str | None:
    if config.get("use_l2warp", True):  # RWKV7Config's default is True
        return ("its config has use_l2warp=True: the model's own NTP loss (the faithful mode's) adds fla's L2-warp "
                "gradient term, which the fast mode's loss does not; set "
                "actor_rollout_ref.model.override_config.use_l2warp=False")
    return None


def _no_fast(config: Mapping) -> str | None:
    return "its decoding cache is a softmax-attention KV cache, which the fast mode does not branch yet"


@dataclass(frozen=True)
class Family:
    """One model family (module docstring: what each field means)."""

    name: str
    model_types: tuple[str, ...]
    config_class: str
    state: str
    state_sizes: Callable = _no_state
    kv_per_token: Callable = _hybrid_kv_per_token
    heads: tuple[str, ...] = ("num_heads",)
    cpu_kernels: tuple[tuple[str, str, str], ...] = ()
    # fla: `attn_state` is the softmax-attention KV cache of hybrid configs' `attn` layers (None elsewhere)
    state_keys: tuple[str, ...] = ("recurrent_state", "conv_state", "attn_state")
    fast_refusal: Callable[[Mapping], str | None] | None = None
    tiny: Mapping = field(default_factory=dict)
    tiny_builder: str | None = None

    def config_cls(self):
        module, _, name = self.config_class.partition(":")
        return getattr(importlib.import_module(module), name)

    def fast_mode_refusal(self, config: Mapping) -> str | None:
        """Why this family (with `config`, a config.json-like mapping) cannot run the fast NSP mode; None: it can."""
        if self.state == NO_BRANCHING:
            return _no_fast(config)
        return self.fast_refusal(config) if self.fast_refusal else None


FAMILIES: tuple[Family, ...] = (
    Family(
        name="delta_net", model_types=("delta_net",), config_class="fla.models:DeltaNetConfig", state=FLA_CACHE,
        state_sizes=_delta_state,
        cpu_kernels=(("fla.layers.delta_net", "chunk_delta_rule", "chunk_delta_rule"),
                     ("fla.layers.delta_net", "fused_recurrent_delta_rule", "fused_recurrent_delta_rule"),
                     ("fla.ops.delta_rule", "chunk_delta_rule", "chunk_delta_rule"),
                     ("fla.ops.delta_rule", "fused_recurrent_delta_rule", "fused_recurrent_delta_rule")),
        tiny=FLA_TINY),
    Family(
        name="gated_deltanet", model_types=("gated_deltanet",), config_class="fla.models:GatedDeltaNetConfig",
        state=FLA_CACHE, state_sizes=_gated_delta_state,
        cpu_kernels=(("fla.layers.gated_deltanet", "chunk_gated_delta_rule", "chunk_gated_delta_rule"),
                     ("fla.layers.gated_deltanet", "fused_recurrent_gated_delta_rule",
                      "fused_recurrent_gated_delta_rule"),
                     ("fla.layers.gated_deltanet", "causal_conv1d", "causal_conv1d"),
                     ("fla.ops.gated_delta_rule", "chunk_gated_delta_rule", "chunk_gated_delta_rule"),
                     ("fla.ops.gated_delta_rule", "fused_recurrent_gated_delta_rule",
                      "fused_recurrent_gated_delta_rule")),
        tiny={**FLA_TINY, "head_dim": 32, "expand_v": 1}),
    Family(
        name="gla", model_types=("gla",), config_class="fla.models:GLAConfig", state=FLA_CACHE,
        state_sizes=_gla_state, heads=("num_heads", "num_kv_heads"),
        cpu_kernels=(*gla_kernels("fla.layers.gla"), *SWISH_KERNELS),
        tiny={**FLA_TINY, "expand_k": 0.5, "expand_v": 1}),
    Family(
        name="hgrn2", model_types=("hgrn2",), config_class="fla.models:HGRN2Config", state=FLA_CACHE,
        state_sizes=_hgrn2_state,
        cpu_kernels=(*gla_kernels("fla.layers.hgrn2"), *SWISH_KERNELS,
                     ("fla.layers.hgrn2", "rms_norm_linear", "rms_norm_linear")),
        tiny={**FLA_TINY, "expand_ratio": 16}),
    Family(
        name="retnet", model_types=("retnet",), config_class="fla.models:RetNetConfig", state=FLA_CACHE,
        state_sizes=_gla_state, heads=("num_heads", "num_kv_heads"),
        cpu_kernels=(*((module, op, op) for module in ("fla.layers.multiscale_retention", "fla.ops.retention")
                       for op in ("chunk_retention", "fused_chunk_retention", "fused_recurrent_retention",
                                  "parallel_retention")),
                     ("fla.modules.rotary.ops", "rotary_embedding", "rotary_embedding"), *SWISH_KERNELS),
        fast_refusal=_rotary_refusal, tiny={**FLA_TINY, "expand_k": 0.5, "expand_v": 1}),
    Family(
        name="mamba2", model_types=("mamba2",), config_class="fla.models:Mamba2Config", state=FLA_CACHE,
        state_sizes=_mamba2_state,
        cpu_kernels=(("fla.layers.mamba2", "Mamba2.torch_forward", "mamba2_forward"),
                     ("fla.modules.norm.layernorm_gated", "RMSNormGated.forward", "rms_norm_gated_ref_forward")),
        tiny={**FLA_TINY, "num_heads": 8, "head_dim": 16, "state_size": 16, "expand": 2, "chunk_size": 16}),
    Family(
        name="kda", model_types=("kda",), config_class="fla.models:KDAConfig", state=FLA_CACHE,
        state_sizes=_gated_delta_state,
        cpu_kernels=tuple((module, op, op) for module in ("fla.layers.kda", "fla.ops.kda")
                          for op in ("chunk_kda", "fused_recurrent_kda")),
        tiny={**FLA_TINY, "head_dim": 32, "expand_v": 1}),
    Family(
        name="comba", model_types=("comba",), config_class="fla.models:CombaConfig", state=FLA_CACHE,
        state_sizes=_gated_delta_state,
        cpu_kernels=tuple((module, op, op) for module in ("fla.layers.comba", "fla.ops.comba")
                          for op in ("chunk_comba", "fused_recurrent_comba")),
        tiny={**FLA_TINY, "head_dim": 32, "expand_v": 1}),
    Family(
        name="gated_deltaproduct", model_types=("gated_deltaproduct",),
        config_class="fla.models:GatedDeltaProductConfig", state=FLA_CACHE, state_sizes=_delta_product_state,
        cpu_kernels=(("fla.layers.gated_deltaproduct", "chunk_gated_delta_product", "chunk_gated_delta_product"),
                     ("fla.ops.gated_delta_product", "chunk_gated_delta_product", "chunk_gated_delta_product"),
                     ("fla.layers.gated_deltaproduct", "fused_recurrent_gated_delta_rule",
                      "fused_recurrent_gated_delta_rule")),
        tiny={**FLA_TINY, "head_dim": 32, "expand_v": 1, "num_householder": 2, "use_forget_gate": True}),
    Family(
        name="rwkv7", model_types=("rwkv7",), config_class="fla.models:RWKV7Config", state=FLA_CACHE,
        state_sizes=_rwkv7_state, state_keys=("recurrent_state", "conv_state", "ffn_state"),
        fast_refusal=_rwkv7_refusal,
        cpu_kernels=(*(("fla.layers.rwkv7", op, op) for op in (
                         "chunk_rwkv7", "fused_mul_recurrent_rwkv7", "token_shift", "fused_addcmul_rwkv7",
                         "fused_k_rwkv7", "gate_output_correction")),
                     *(("fla.ops.rwkv7", op, op) for op in (
                         "chunk_rwkv7", "fused_recurrent_rwkv7", "fused_mul_recurrent_rwkv7")),
                     ("fla.models.rwkv7.modeling_rwkv7", "token_shift", "token_shift"),
                     *(("fla.modules.activations.ops", name, name) for name in ("sqrelu_fwd", "sqrelu_bwd"))),
        tiny={**FLA_TINY, "head_dim": 32, "decay_low_rank_dim": 8, "gate_low_rank_dim": 8, "a_low_rank_dim": 8,
              "v_low_rank_dim": 8, "use_l2warp": False}),
    Family(
        name="hf_decoder", model_types=("llama", "qwen2", "mistral"),
        config_class="transformers:LlamaConfig", state=KV_CACHE, heads=(), state_keys=("attn_state",),
        kv_per_token=_decoder_kv_per_token,
        tiny=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=128, max_position_embeddings=4096, tie_word_embeddings=False)),
    Family(
        name="lact", model_types=("lact_swiglu",), config_class="refine.models.lact:LaCTConfig", state=LACT_CACHE,
        state_sizes=_lact_state, heads=(), state_keys=(), fast_refusal=_lact_refusal,
        tiny_builder="refine.models.lact:tiny_lact_config"),
)


class UnknownFamily(ValueError):
    """A model type no entry of `FAMILIES` names."""


def family_names() -> tuple[str, ...]:
    return tuple(f.name for f in FAMILIES)


def fast_family_names() -> tuple[str, ...]:
    """The families whose state branches (the fast NSP mode runs them, some only with a setting: `fast_refusal`)."""
    return tuple(f.name for f in FAMILIES if f.state != NO_BRANCHING)


def supported_model_types() -> tuple[str, ...]:
    return tuple(t for f in FAMILIES for t in f.model_types)


def family_named(name: str) -> Family:
    for family in FAMILIES:
        if family.name == name:
            return family
    raise UnknownFamily(f"no model family {name!r}; the families are {', '.join(family_names())}")


def family_for(model_type: str | None) -> Family:
    """The family of an HF `model_type`; UnknownFamily (one line: the type, the supported ones, the fix)."""
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    raise UnknownFamily(
        f"model_type {model_type!r} is not a ReFINE model family (supported model types: "
        f"{', '.join(supported_model_types())}); use a checkpoint of one of them, or add the family to "
        "refine/models/families.py (one entry, plus CPU kernels if its ops are new)")


def family_of(config) -> Family:
    """The family of an HF config object (its `model_type`)."""
    return family_for(getattr(config, "model_type", None))


def config_view(config) -> Mapping:
    """A config object as the mapping `fast_mode_refusal` reads (config.json's keys)."""
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def all_cpu_kernels() -> tuple[tuple[str, str, str], ...]:
    """Every (module, attribute, replacement) the CPU switch installs: shared ones, then each family's, once."""
    seen, patches = set(), []
    for patch in (*FLA_SHARED_KERNELS, *FLA_ATTENTION_KERNELS, *(p for f in FAMILIES for p in f.cpu_kernels)):
        if patch[:2] not in seen:
            seen.add(patch[:2])
            patches.append(patch)
    return tuple(patches)
