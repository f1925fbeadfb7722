"""Structure, registration, loading and bad-input checks (spec lact-model.md §3, §8 items 1-2)."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM

import refine.models  # noqa: F401  (registers lact_swiglu with the Auto classes)
from refine.models.lact import LaCTConfig, LaCTForCausalLM, tiny_lact_config

CONFIG_760M = dict(  # configs/760M_lact_swiglu_nh4_fwlow_rank_momentum.json (spec §2, "mom" column)
    hidden_size=1536, num_hidden_layers=24, num_attn_heads=24, num_lact_heads=4, inter_multi=1, qkv_bias=False,
    attn_qk_norm=False, lact_chunk_size=2048, use_muon=False, lr_dim=1, qkv_silu=True, lr_parameterization="mamba",
    learnable_ttt_scale=True, use_momentum=True, w0_w2_low_rank=32, window_size=2048, rope_theta=1000000,
    max_position_embeddings=32768, hidden_act="swish", initializer_range=0.02, norm_eps=1e-06, use_cache=True,
    bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, fuse_norm=True, fuse_cross_entropy=True,
    vocab_size=32000, fw_init_gain=0.5, attention_bias=False,
)

BLOCK_SHAPES = {  # spec §3, per block
    "attn_norm.weight": (1536,), "attn.qkv.weight": (4608, 1536), "attn.o_proj.weight": (1536, 1536),
    "attn.w0.w_left": (4, 384, 32), "attn.w0.w_right": (4, 32, 384), "attn.w2.w_left": (4, 384, 32),
    "attn.w2.w_right": (4, 32, 384), "attn.w1": (4, 384, 384), "attn.lr_proj.weight": (12, 1536),
    "attn.lr_proj.bias": (12,), "attn.qk_scale": (1536, 2), "attn.qk_offset": (1536, 2),
    "attn.ttt_scale_proj.weight": (4, 1536), "attn.ttt_scale_proj.bias": (4,), "attn.ttt_norm.weight": (384,),
    "attn.momentum_proj.0.weight": (4, 1536), "attn.momentum_proj.0.bias": (4,), "mlp_norm.weight": (1536,),
    "mlp.gate_proj.weight": (4096, 1536), "mlp.up_proj.weight": (4096, 1536), "mlp.down_proj.weight": (1536, 4096),
}


def test_760m_parameter_names_shapes_and_count():
    config = LaCTConfig(**CONFIG_760M)
    assert (config.head_dim, config.fw_head_dim, config.fw_hidden_dim, config.mlp_intermediate_size) == (
        64, 384, 384, 4096)
    with torch.device("meta"):
        model = LaCTForCausalLM(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = {"model.embeddings.weight": (32000, 1536), "model.norm.weight": (1536,),
                "lm_head.weight": (32000, 1536)}
    for i in range(24):
        expected.update({f"model.layers.{i}.{k}": s for k, s in BLOCK_SHAPES.items()})
    assert shapes == expected
    assert len(shapes) == 507
    assert sum(p.numel() for p in model.parameters()) == 797_625_312
    assert model.lm_head.weight is not model.model.embeddings.weight
    assert not list(model.buffers())


def test_config_roundtrip_and_auto_registration(tmp_path, fw_shape):
    config = tiny_lact_config(attention_bias=False, **fw_shape)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "lact_swiglu"
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, LaCTConfig)
    strip = lambda d: {k: v for k, v in d.items() if k != "_name_or_path"}  # noqa: E731
    assert strip(loaded.to_dict()) == strip(config.to_dict())
    assert loaded.num_attention_heads == loaded.num_key_value_heads == loaded.num_attn_heads


def test_save_and_load_roundtrip(tmp_path, fw_shape):
    torch.manual_seed(0)
    model = LaCTForCausalLM(tiny_lact_config(attn_implementation="eager", **fw_shape)).eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(loaded, LaCTForCausalLM)
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)
    ids = torch.randint(0, 512, (1, 20))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


def test_tied_embeddings_and_attn_implementation(tmp_path):
    model = LaCTForCausalLM(tiny_lact_config(tie_word_embeddings=True))
    assert model.lm_head.weight is model.model.embeddings.weight
    model.save_pretrained(tmp_path)
    for impl in ("eager", "sdpa", None):
        kwargs = {} if impl is None else {"attn_implementation": impl}
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path, **kwargs)  # lm_head.weight absent: tied, not missing
        assert loaded.lm_head.weight is loaded.model.embeddings.weight
        assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


@pytest.mark.parametrize("change", ["missing", "unexpected"])
def test_checkpoint_key_mismatch_is_an_error(tmp_path, change):
    LaCTForCausalLM(tiny_lact_config()).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    key = "model.layers.1.attn.w0.w_left"
    if change == "missing":
        del weights[key]
    else:
        key = "model.layers.0.attn.extra_proj.weight"
        weights[key] = torch.zeros(2, 2)
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        AutoModelForCausalLM.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (dict(num_attn_heads=5), "num_attn_heads"),
        (dict(num_lact_heads=3), "num_lact_heads"),
        (dict(hidden_size=64, num_attn_heads=64), "head_dim"),
        (dict(lact_chunk_size=0), "lact_chunk_size"),
        (dict(window_size=-1), "window_size"),
        (dict(inter_multi=0.01), "inter_multi"),
        (dict(inter_multi="2"), "inter_multi"),
        (dict(lr_dim=3), "lr_dim"),
        (dict(lr_dim=0), "lr_dim"),
        (dict(lr_dim=32, inter_multi=2), "lr_dim"),
        (dict(ttt_loss_type="mse"), "ttt_loss_type"),
        (dict(num_attention_heads=8), "num_attention_heads"),
    ],
)
def test_bad_config_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        tiny_lact_config(**overrides)


def test_fast_weight_shapes_and_low_rank_init(fw_shape):
    """Parameter shapes from the spec's definitions (d_h = int(d·inter_multi), lr_proj out = 3·lr_dim·heads) and
    W_init = w_left @ w_right + 0.5·I with a rectangular identity (ones at (i, i), i < min(d_h, d_in))."""
    config = tiny_lact_config(**fw_shape)
    heads, d, rank = config.num_lact_heads, config.hidden_size // config.num_lact_heads, config.w0_w2_low_rank
    d_h, lr_dim = int(d * fw_shape.get("inter_multi", 1)), fw_shape.get("lr_dim", 1)
    torch.manual_seed(0)
    attn = LaCTForCausalLM(config).model.layers[0].attn
    shapes = {k: tuple(v.shape) for k, v in attn.state_dict().items()}
    assert shapes["w0.w_left"] == shapes["w2.w_left"] == (heads, d_h, rank)
    assert shapes["w0.w_right"] == shapes["w2.w_right"] == (heads, rank, d)
    assert shapes["w1"] == (heads, d, d_h)
    assert shapes["lr_proj.weight"] == (3 * lr_dim * heads, config.hidden_size)
    with torch.no_grad():
        expected = attn.w0.w_left @ attn.w0.w_right
        for i in range(min(d_h, d)):
            expected[:, i, i] += 0.5
        assert (attn.w0() - expected).abs().max() < 1e-6
    w0_1, w1_1, w2_1 = attn.initial_fast_weights(1)
    assert w0_1.shape == w2_1.shape == (heads, d_h, d) and w1_1.shape == (heads, d, d_h)


def test_bad_inputs_fail_early():
    model = LaCTForCausalLM(tiny_lact_config()).eval()
    ids = torch.randint(0, 512, (2, 10))
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids, attention_mask=torch.ones(2, 1, 10, 10))
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids, attention_mask=torch.ones(2, 12))
    with pytest.raises(ValueError, match="position_ids"):
        model(ids, position_ids=torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3, 4]] * 2))
    # verl's padded path right-pads position_ids with 0: positions of pads are not a restart
    with torch.no_grad():
        model(ids[:, :4], attention_mask=torch.tensor([[1, 1, 1, 0]] * 2), position_ids=torch.tensor([[0, 1, 2, 0]] * 2))
    with pytest.raises(ValueError, match="past_key_values"):
        from transformers import DynamicCache

        model(ids, past_key_values=DynamicCache())
