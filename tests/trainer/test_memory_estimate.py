"""The memory estimate printed at start (refine/preflight/memory_estimate.py) against hand computations of the formula
in its docstring, written out here in numbers: DeltaNet-1.3B (fla-hub/delta_net-1.3B-100B = fla's DeltaNetConfig
defaults, spec official-behaviour §5.2) under the GPU mid-training preset, and the tiny CPU demo model."""

from __future__ import annotations

import pytest

GIB = 1024**3

# DeltaNet-1.3B: H 2048, L 24, V 32000, 16 heads (head dims 128), d_q = d_k = d_v = 2048, short conv 4,
# MLP width 5632 (fla: 2048 * 4 * 2/3 = 5461, rounded up to a multiple of 256), untied embeddings.
P_1_3B = (2 * 32000 * 2048  # embeddings + lm_head
          + 2048  # final norm
          + 24 * (2048 + 2048  # attn_norm, mlp_norm
                  + 4 * 2048 * 2048  # q, k, v, o projections
                  + 16 * 2048  # beta projection
                  + 3 * 2048 * 4  # depthwise short convolutions of q, k, v
                  + 128  # per-head output norm
                  + 3 * 2048 * 5632))  # gate, up, down
A_1_3B = 4 * 2048 + 2 * (3 * 2048) + (2048 + 2048) + 2 * 2048 + 0 + 3 * 5632  # elements per token per block


@pytest.fixture(scope="module")
def deltanet_1_3b(tmp_path_factory):
    """A model folder holding only the config.json of DeltaNet-1.3B (the estimate needs no weights)."""
    from fla.models import DeltaNetConfig

    path = tmp_path_factory.mktemp("deltanet_1_3b")
    DeltaNetConfig().save_pretrained(path)
    return path


def _shapes(model_dir, overrides, *, on_cuda=True):
    from refine.preflight.compose import compose
    from refine.preflight import memory_estimate as me
    from refine.preflight.aliases import apply_official_aliases
    from refine.preflight.schema import refine_config_from

    config = compose([*overrides, f"actor_rollout_ref.model.path={model_dir}"])
    apply_official_aliases(config)
    return me.model_shape(str(model_dir), on_cuda=on_cuda), me.run_shape(config, refine_config_from(config))


def test_deltanet_1_3b_at_16k_micro_batch_2_bf16_matches_the_hand_computation(deltanet_1_3b):
    from refine.preflight.memory_estimate import estimate

    assert P_1_3B == 1_365_677_056 and A_1_3B == 45_568
    model, run = _shapes(deltanet_1_3b, ["+preset=gpu_midtrain"])
    assert model.n_params == P_1_3B and model.block_elements == A_1_3B
    assert (run.seq_len, run.micro, run.log_prob_micro, run.shard) == (16384, 2, 2, 8)
    assert (run.master_bytes, run.compute_bytes, run.checkpointing) == (4, 2, True)
    got = estimate(model, run)

    # model states: fp32 weights, gradients and AdamW's two moments sharded over 8 GPUs, bf16 weights + gradients
    assert got.states == {"weights": 682_838_528, "gradients": 682_838_528, "optimiser": 1_365_677_056,
                          "gathered": 5_462_708_224}
    # analysis (no grad): 2 rows x 16384 tokens x (one block 45568 + 2 x 2048) x 2 B + full bf16 logits
    analysis = 2 * 16384 * (45568 + 4096) * 2 + 2 * 16384 * 32000 * 2
    # validation loss: the same body + bf16 logits and their fp32 softmax
    validation = 2 * 16384 * (45568 + 4096) * 2 + 2 * 16384 * 32000 * (2 + 4)
    # NTP update, checkpointed: per token 24 block inputs of 2048 + one recomputed block + final norm in/out;
    # fla's fused cross-entropy on CUDA keeps only the bf16 logits
    ntp = 2 * 2 * 16384 * (24 * 2048 + 45568 + 2 * 2048) + 2 * 16384 * 32000 * 2
    # faithful NSP update: rows of S + k = 16389 tokens, logits of the last 6 positions (bf16 + fp32 + fp32 grad)
    nsp = 2 * 2 * 16389 * (24 * 2048 + 45568 + 2 * 2048) + 2 * 6 * 32000 * (2 + 4 + 4)
    assert got.parts == {"analysis": analysis, "validation": validation, "NTP update": ntp, "NSP update": nsp}
    assert (analysis, validation, ntp, nsp) == (5_351_931_904, 9_546_235_904, 8_573_157_376, 6_481_821_696)
    assert got.largest_part == "validation" and got.total == 8_194_062_336 + 9_546_235_904

    fast_model, fast_run = _shapes(deltanet_1_3b, ["+preset=gpu_midtrain", "refine.nsp_mode=fast"])
    fast = estimate(fast_model, fast_run)
    # checkpointed segments: one segment of at most 2 x 16384 / 8 = 4096 tokens recomputed at a time (24 full
    # blocks, own fp32 cross-entropy), the 8 branches of 6 tokens likewise, + 16 state snapshots (8 cuts, 8 rows) x
    # 24 blocks x (fp32 delta-rule state 16 x 128 x 128 + bf16 conv caches 3 x 2048 x 3)
    update = (2 * 4096 * (24 * 45568 + 2 * 2048) + 4096 * 32000 * (2 + 4 + 4)
              + 2 * 48 * (24 * 45568 + 2 * 2048) + 48 * 32000 * (2 + 4 + 4)
              + 16 * 24 * (4 * 16 * 128 * 128 + 2 * 6144 * 3))
    assert update == 10_840_858_624
    assert fast.parts == {"analysis": analysis, "validation": validation, "fast update": update}
    assert fast.total == 8_194_062_336 + update and round(fast.total / GIB, 1) == 17.7


def test_tiny_cpu_model_fp32_without_checkpointing_matches_the_hand_computation():
    """The embedded demo model on CPU: fp32 everywhere, no activation checkpointing, torch's cross-entropy."""
    from refine.preflight.compose import REPO_ROOT
    from refine.preflight.memory_estimate import estimate

    model, run = _shapes(REPO_ROOT / "data/demo/model", ["+preset=embedded_demo"], on_cuda=False)
    # H 64, L 2, V 512, 2 heads of 32, MLP 256 (64 * 4 * 2/3 = 170 -> 256)
    params = 2 * 512 * 64 + 64 + 2 * (64 + 64 + 4 * 64 * 64 + 2 * 64 + 3 * 64 * 4 + 32 + 3 * 64 * 256)
    block = 4 * 64 + 2 * 192 + 128 + 2 * 64 + 3 * 256
    assert model.n_params == params == 198_784 and model.block_elements == block == 1664
    got = estimate(model, run)
    assert got.states == {"weights": 4 * params, "gradients": 4 * params, "optimiser": 8 * params,
                          "gathered": 8 * params}
    # 4 rows of 256 tokens, every block kept (2 x 1664) + final norm in/out, logits fp32 + fp32 + fp32 grad
    ntp = 4 * 4 * 256 * (2 * 1664 + 2 * 64) + 4 * 256 * 512 * (4 + 4 + 4)
    assert got.parts["NTP update"] == ntp == 20_447_232


def test_report_warns_when_it_will_not_fit_and_says_when_there_is_no_check(deltanet_1_3b, monkeypatch):
    from refine.preflight.memory_estimate import MEMORY_ENV, device_memory, report_lines

    model, run = _shapes(deltanet_1_3b, ["+preset=gpu_midtrain", "refine.nsp_mode=fast"])
    small = report_lines(model, run, "cuda", (16 * GIB, "a 16 GiB GPU"))
    warning = [line for line in small if "WARNING" in line]
    assert len(warning) == 1 and "17.7 GiB" in warning[0] and "fast update" in warning[0]
    assert "refine.micro_batch_size_per_gpu" in warning[0]
    assert any("refine.nsp_mode=faithful: total 16.5 GiB" in line for line in small)
    big = report_lines(model, run, "cuda", (80 * GIB, "an 80 GiB GPU"))
    assert not any("WARNING" in line for line in big) and "fits: 17.7 GiB of 80.0 GiB" in big[-1]
    none = report_lines(model, run, "cpu", None)
    assert "no fit check: trainer.device=cpu" in none[-1] and MEMORY_ENV in none[-1]

    monkeypatch.setenv(MEMORY_ENV, "80")
    assert device_memory("cpu") == (80 * GIB, f"{MEMORY_ENV}=80")
    monkeypatch.setenv(MEMORY_ENV, "eighty")
    with pytest.raises(ValueError, match=rf"{MEMORY_ENV}='eighty': not a number"):
        device_memory("cpu")


def test_prepare_prints_the_estimate_and_a_warning_without_failing(monkeypatch, capsys):
    """The start-up hook: the CPU demo prints the estimate, and a too-small GPU size only warns."""
    from refine.preflight.compose import compose
    from refine.preflight.prepare import prepare
    from refine.preflight.memory_estimate import MEMORY_ENV

    monkeypatch.setenv(MEMORY_ENV, "0.001")
    prepare(compose(["+preset=embedded_demo"]))
    out = capsys.readouterr().out
    assert "refine: memory estimate per worker" in out and "199K parameters" in out
    assert "refine: WARNING: the estimated" in out and "1.0 MiB" in out


@pytest.mark.parametrize("family,overrides,per_token", [
    ("hf_decoder", {}, 2 * 2 * 16),  # Llama: 2 key/value heads of 64 / 4 = 16, in every layer
    ("delta_net", {"attn": {"layers": [1], "num_heads": 2}}, 2 * 2 * 32 // 2),  # one of 2 layers, 2 heads of 32
])
def test_the_fast_update_counts_the_cached_keys_and_values_of_attention_layers(family, overrides, per_token):
    """A branch off an attention layer carries its keys/values (the family table's `kv_per_token`): up to S
    cached tokens per snapshot, (C + C*n) snapshots per document, in the compute dtype."""
    import dataclasses

    import torch
    from transformers import AutoModelForCausalLM

    from refine.models.tiny import tiny_config
    from refine.preflight.compose import REPO_ROOT
    from refine.preflight.memory_estimate import estimate, shape_of

    with torch.device("meta"):
        model = shape_of(AutoModelForCausalLM.from_config(tiny_config(family, **overrides)), on_cuda=False)
    _, run = _shapes(REPO_ROOT / "data/demo/model", ["+preset=embedded_demo", "refine.nsp_mode=fast"], on_cuda=False)
    assert model.kv_per_token == per_token
    without = estimate(dataclasses.replace(model, kv_per_token=0), run).parts["fast update"]
    snapshots = run.n_chunks + run.n_chunks * run.n_per_prefix
    assert estimate(model, run).parts["fast update"] - without == (
        snapshots * model.layers * run.compute_bytes * per_token * run.seq_len)
