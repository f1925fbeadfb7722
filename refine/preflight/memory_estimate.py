"""Memory per GPU of a ReFINE run, estimated before Ray starts and printed with a warning when it will not fit.

The parameter count and the layer widths come from the model built on the meta device from its `config.json`
(`AutoModelForCausalLM.from_config` under `torch.device("meta")`: no memory, milliseconds; the model check builds
the same model). That is exact for every family of refine/models/families.py (tied embeddings,
biases, per-head norms, fla's rounding of the MLP width) without restating any model's layout here.

Notation (config keys in brackets):
  P     parameters of the model (meta model; shared tensors once)
  W     FSDP shard group [actor.fsdp_config.fsdp_size, or n_gpus_per_node x nnodes when -1]
  b_m   bytes per element of the master weights [actor.fsdp_config.model_dtype]: fp32 4, bf16/fp16 2
  b_p   bytes per element of the compute copy [actor.fsdp_config.mixed_precision.param_dtype, verl's default
        bf16]: activations and logits are in this dtype (FSDP casts the weights, autocast the matmuls)
  H, L, V, I  hidden size, number of blocks (the GradientCheckpointingLayer modules), vocabulary, MLP width
  d_q, d_k, d_v, d_g  widths of the mixer's q/k/v projections and output gate (0 without one), from its Linears
  S = data.max_prompt_length, k = refine.response_length, C = refine.n_chunks, n = refine.n_per_prefix
  mu = refine.micro_batch_size_per_gpu, mu_lp = refine.log_prob_micro_batch_size_per_gpu,
  mu_t = actor.ppo_micro_batch_size_per_gpu, R = data.max_response_length

Model states, per GPU, held for the whole run:
  weights b_m*P/W + gradients b_m*P/W (sharded, kept in the master dtype) + AdamW 2*b_m*P/W (exp_avg and
  exp_avg_sq) + gathered 2*b_p*P (the compute copy of the weights and of their unsharded gradients, counted in
  full: exact for one FSDP unit, as FSDP1 without an auto-wrap policy runs officially; an upper bound for verl's
  FSDP2, which gathers one block at a time). param_offload / optimizer_offload are not subtracted: verl moves them
  back to the GPU for the update, so the peak holds them.

Activations, per GPU: the largest of the parts the run has, each holding one micro-batch (they run one after
the other and free their tensors). Per token, one block keeps for its backward
  a = 4H + 2(d_q + d_k + d_v) + (d_k + d_v) + 2 d_v + d_g + 3I  elements:
  its input, two norm outputs and the residual sum (4H); the q/k/v projections and their short-convolution /
  SiLU outputs; the delta-rule kernel's intermediates (d_k + d_v); the output norm's input and output; the output
  gate; the MLP's gate, up and SwiGLU product (3I).
  body(T)   = b_p*T*(L*H + a + 2H) with activation checkpointing [actor_rollout_ref.model.
              enable_gradient_checkpointing] (each block keeps only its input, one block is recomputed at a time;
              2H: the final norm's input and output), b_p*T*(L*a + 2H) without
  logits(T) = T*V*b_p for fla's fused cross-entropy (fla model on CUDA with fuse_cross_entropy: the gradient is
              written into the logits), else T*V*(b_p + 4 + 4) (logits, the fp32 log-softmax kept for backward,
              its fp32 gradient); 0 for the NTP loss with fuse_linear_cross_entropy (chunked, never whole)
  parts:
  analysis     (NSP on, no grad)  mu_lp*S*(a + 2H)*b_p + mu_lp*S*V*b_p  (one block's work and the kept last
               hidden state; the full logits give the entropies)
  validation   (val_get_loss)     mu_lp*S*(a + 2H)*b_p + mu_lp*S*V*(b_p + 4)  (logits and their fp32 softmax)
  NTP update   (faithful, or NTP-only)  mu*body(S) + mu*logits(S)
  NSP update   (faithful)         mu*body(S + k) + mu*(k + 1)*V*(b_p + 8): the re-encoded prefix rows of S + k
               tokens, logits of the last k + 1 positions only
  fast update  (nsp_mode=fast)    one document at a time; per-layer checkpointing cannot carry the cache, so
               with checkpointing on the document's segments are checkpointed whole and one is recomputed at a
               time: T_m = min(S, ceil(2S/C)) tokens (a segment spans at most two of the C equal chunks), else
               T_m = S; its body without checkpointing and its own fp32 cross-entropy, body(T_m) + T_m*V*(b_p + 8),
               + the same for the C*n branches of k + 1 tokens, T_b = C*n*(k + 1): body(T_b) + T_b*V*(b_p + 8),
               + state snapshots (C + C*n)*L*(4*s_32 + b_p*(s_p + s_t*S))
               (one per cut and one per branch row). Per block and row, from the family table
               (`Family.state_sizes`, refine/models/families.py), e.g. fla DeltaNet / GDN: s_32 = h_v*d_hk*d_hv
               (the delta-rule state), s_p = (d_q + d_k + d_v)*(conv - 1) (short-convolution caches); LaCT:
               s_32 = 3*h_fw*d_fw*d_fw_hidden, twice with momentum (fast weights), s_p = 2H*(window + chunk) (the
               sliding-window keys/values and the open chunk); s_t: keys/values per cached token of the
               softmax-attention layers (a transformers decoder: 2*h_kv*d_head; fla hybrids: their `attn`
               layers', averaged over the blocks), at most S tokens per snapshot
  task update  (post-training)    mu_t*body(S + R) + mu_t*(R + 1)*V*(b_p + 8)
Total = model states + the largest part. The fit check warns above 90 % of the device memory (the CUDA context,
NCCL buffers and allocator fragmentation take the rest). Device memory: REFINE_GPU_MEMORY_GIB when set, else the
first CUDA device's total memory when the run is on CUDA, else no fit check (a note says so).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from refine.settings import n_workers

FIT_FRACTION = 0.9
MEMORY_ENV = "REFINE_GPU_MEMORY_GIB"
FP32_BYTES = 4  # log-softmax, its gradient and the delta-rule state are fp32 whatever the compute dtype


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs from the model (read from the meta model by `model_shape`)."""

    n_params: int
    hidden: int
    layers: int
    vocab: int
    mlp: int
    d_q: int
    d_k: int
    d_v: int
    d_gate: int = 0
    state_fp32: int = 0  # s_32: recurrent state per block and row kept in fp32 (0: no branchable state)
    state_compute: int = 0  # s_p: per block and row, in the compute dtype (caches of keys/values, convolutions)
    kv_per_token: int = 0  # s_t: per block, row and cached token: softmax-attention keys/values (compute dtype)
    fused_ce: bool = False
    fused_linear_ce: bool = False
    notes: tuple[str, ...] = ()

    @property
    def block_elements(self) -> int:
        """a: elements per token one block keeps for its backward (module docstring)."""
        return (4 * self.hidden + 2 * (self.d_q + self.d_k + self.d_v) + (self.d_k + self.d_v) + 2 * self.d_v
                + self.d_gate + 3 * self.mlp)


@dataclass(frozen=True)
class RunShape:
    """What the estimate needs from the run config (read by `run_shape`)."""

    seq_len: int  # S
    response_length: int  # k (0 without NSP)
    n_chunks: int  # C
    n_per_prefix: int  # n
    micro: int  # mu
    log_prob_micro: int  # mu_lp
    shard: int  # W
    master_bytes: int  # b_m
    compute_bytes: int  # b_p
    checkpointing: bool
    dtypes: str = "fp32 / bf16"  # master / compute, as configured (for the report)
    nsp_mode: str = "faithful"
    nsp: bool = False  # an NSP (PPO) inner update runs
    ntp: bool = False  # an inner NTP update runs
    val_loss: bool = False
    task_micro: int = 0  # mu_t (0: no task update)
    task_response_length: int = 0  # R


def model_state_bytes(model: ModelShape, run: RunShape) -> dict[str, int]:
    p, w = model.n_params, run.shard
    return {"weights": run.master_bytes * p // w, "gradients": run.master_bytes * p // w,
            "optimiser": 2 * run.master_bytes * p // w, "gathered": 2 * run.compute_bytes * p}


def body_bytes(model: ModelShape, run: RunShape, tokens: int, checkpointing: bool) -> int:
    kept_per_token = (model.layers * model.hidden + model.block_elements if checkpointing
                      else model.layers * model.block_elements)
    return run.compute_bytes * tokens * (kept_per_token + 2 * model.hidden)


def activation_bytes(model: ModelShape, run: RunShape) -> dict[str, int]:
    """The parts this run has (module docstring), in bytes."""
    b, v, s, k = run.compute_bytes, model.vocab, run.seq_len, run.response_length
    unfused = b + 2 * FP32_BYTES
    no_grad_body = (model.block_elements + 2 * model.hidden) * b
    parts = {}
    if run.nsp:
        parts["analysis"] = run.log_prob_micro * s * (no_grad_body + v * b)
    if run.val_loss:
        parts["validation"] = run.log_prob_micro * s * (no_grad_body + v * (b + FP32_BYTES))
    if run.ntp and not (run.nsp and run.nsp_mode == "fast"):
        ntp_logit = 0 if model.fused_linear_ce else (b if model.fused_ce else unfused)
        parts["NTP update"] = run.micro * (body_bytes(model, run, s, run.checkpointing) + s * v * ntp_logit)
    if run.nsp and run.nsp_mode == "faithful":
        parts["NSP update"] = run.micro * (body_bytes(model, run, s + k, run.checkpointing) + (k + 1) * v * unfused)
    if run.nsp and run.nsp_mode == "fast":
        rows = run.n_chunks * run.n_per_prefix
        branches = rows * (k + 1)
        # checkpointed: one segment (at most two chunks' worth of tokens) is recomputed at a time
        main = min(s, -(-2 * s // run.n_chunks)) if run.checkpointing else s
        state = FP32_BYTES * model.state_fp32 + b * (model.state_compute + model.kv_per_token * s)
        parts["fast update"] = (body_bytes(model, run, main, False) + main * v * unfused
                                + body_bytes(model, run, branches, False) + branches * v * unfused
                                + (run.n_chunks + rows) * model.layers * state)
    if run.task_micro:
        r = run.task_response_length
        parts["task update"] = run.task_micro * (body_bytes(model, run, s + r, run.checkpointing)
                                                 + (r + 1) * v * unfused)
    return parts


@dataclass(frozen=True)
class Estimate:
    states: dict[str, int]
    parts: dict[str, int]

    @property
    def activations(self) -> int:
        return max(self.parts.values(), default=0)

    @property
    def largest_part(self) -> str | None:
        return max(self.parts, key=self.parts.get) if self.parts else None

    @property
    def total(self) -> int:
        return sum(self.states.values()) + self.activations


def estimate(model: ModelShape, run: RunShape) -> Estimate:
    return Estimate(model_state_bytes(model, run), activation_bytes(model, run))


# ---- reading the model and the config ---------------------------------------------------------------------------


def _linear_out(block, *names: str) -> int:
    import torch  # torch: the checks before Ray import it only when a model is read

    return sum(m.out_features for name, m in block.named_modules()
               if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in names)


def model_shape(model_path: str, *, on_cuda: bool) -> ModelShape:
    """The `ModelShape` of the model folder's `config.json`, from the model built on the meta device."""
    # torch, transformers and refine.models (fla, seconds): only the estimate of a real run reads a model
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    import refine.models  # noqa: F401 - registers every family of refine.models.families with the Auto classes

    config = AutoConfig.from_pretrained(str(model_path))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return shape_of(model, on_cuda=on_cuda)


def shape_of(model, *, on_cuda: bool) -> ModelShape:
    """The `ModelShape` of an (e.g. meta-device) HF causal LM."""
    from transformers.modeling_layers import GradientCheckpointingLayer  # transformers: only with a model

    config = model.config
    hidden = int(config.hidden_size)
    blocks = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    notes = []
    block = blocks[0] if blocks else model
    if not blocks:
        notes.append(f"{type(model).__name__} has no GradientCheckpointingLayer blocks: activations assume "
                     f"{config.num_hidden_layers} blocks")
    qkv = _linear_out(block, "qkv")  # LaCT: one fused projection
    d_q, d_k, d_v = ((qkv // 3,) * 3 if qkv else
                     (_linear_out(block, "q_proj"), _linear_out(block, "k_proj"), _linear_out(block, "v_proj")))
    if not (d_q and d_k and d_v):
        d_q = d_k = d_v = hidden
        notes.append(f"no q/k/v projections found in {type(block).__name__}: mixer widths taken as hidden_size")
    mlp = _linear_out(block, "gate_proj") or 4 * hidden
    if not _linear_out(block, "gate_proj"):
        notes.append(f"no gate_proj in {type(block).__name__}: MLP width taken as 4 x hidden_size")
    # the branched state's sizes are the family's (refine.models.families); the table is registered with the model
    from refine.models.families import family_of

    family = family_of(config)
    state_fp32, state_compute = family.state_sizes(config, block)
    is_fla = type(model).__module__.startswith("fla.")
    return ModelShape(
        n_params=sum(p.numel() for p in model.parameters()), hidden=hidden,
        layers=len(blocks) or int(config.num_hidden_layers), vocab=int(config.vocab_size), mlp=mlp,
        d_q=d_q, d_k=d_k, d_v=d_v, d_gate=_linear_out(block, "g_proj"), state_fp32=state_fp32,
        state_compute=state_compute, kv_per_token=family.kv_per_token(config),
        fused_ce=on_cuda and is_fla and bool(getattr(config, "fuse_cross_entropy", False)),
        fused_linear_ce=on_cuda and is_fla and bool(getattr(config, "fuse_linear_cross_entropy", False)),
        notes=tuple(notes))


def _dtype_bytes(name) -> int:
    from verl.utils.torch_dtypes import PrecisionType  # verl: heavy, only when a run is estimated

    return PrecisionType.to_dtype(str(name)).itemsize


def run_shape(config, rc) -> RunShape:
    """The `RunShape` of a prepared config (`rc`: its `RefineConfig`)."""
    fsdp = config.actor_rollout_ref.actor.fsdp_config
    mixed = fsdp.get("mixed_precision") or {}
    fsdp_size = int(fsdp.get("fsdp_size", -1))
    master, compute = fsdp.get("model_dtype", "fp32"), mixed.get("param_dtype", "bf16")  # verl's defaults
    task = rc.task_sft_update or rc.task_ppo_update
    return RunShape(
        seq_len=int(config.data.max_prompt_length), response_length=int(rc.response_length or 0),
        n_chunks=int(rc.n_chunks or 0), n_per_prefix=int(rc.n_per_prefix or 1),
        micro=int(rc.micro_batch_size_per_gpu or 1), log_prob_micro=int(rc.log_prob_micro_batch_size_per_gpu or 1),
        shard=fsdp_size if fsdp_size > 0 else n_workers(config),
        master_bytes=_dtype_bytes(master), compute_bytes=_dtype_bytes(compute), dtypes=f"{master} / {compute}",
        checkpointing=bool(config.actor_rollout_ref.model.get("enable_gradient_checkpointing", False)),
        nsp_mode=rc.nsp_mode, nsp=rc.ttt_ppo_update or rc.val_ttt_ppo_update,
        ntp=rc.ttt_sft_update or rc.val_ttt_sft_update or rc.ttt_ppo_update or rc.val_ttt_ppo_update,
        val_loss=rc.val_get_loss,
        task_micro=int(config.actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu or 1) if task else 0,
        task_response_length=int(config.data.get("max_response_length") or 0) if task else 0,
    )


def device_memory(device: str) -> tuple[int, str] | None:
    """(bytes, where the figure comes from) of one GPU, or None when there is nothing to compare against."""
    given = os.environ.get(MEMORY_ENV)
    if given:
        try:
            gib = float(given)
        except ValueError:
            raise ValueError(f"{MEMORY_ENV}={given!r}: not a number. Fix: give the GPU memory in GiB, e.g. "
                             f"{MEMORY_ENV}=80") from None
        return int(gib * 1024**3), f"{MEMORY_ENV}={given}"
    if device == "cuda":
        import torch  # torch: only on a CUDA run

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)  # a property read: no tensor is allocated
            return int(props.total_memory), props.name
    return None


# ---- the report -------------------------------------------------------------------------------------------------


def _size(n: int) -> str:
    return f"{n / 1024**3:.1f} GiB" if n >= 1024**3 else f"{n / 1024**2:.1f} MiB"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"


def report_lines(model: ModelShape, run: RunShape, device: str, memory: tuple[int, str] | None) -> list[str]:
    """The lines printed at start: the estimate, the other NSP mode's total, the fit check or why there is none."""
    est = estimate(model, run)
    states = ", ".join(f"{name} {_size(n)}" for name, n in est.states.items())
    parts = ", ".join(f"{name} {_size(n)}" for name, n in est.parts.items()) or "no update configured"
    header = (f"refine: memory estimate per {'GPU' if device == 'cuda' else 'worker'} "
              f"(refine/preflight/memory_estimate.py): {_count(model.n_params)} parameters sharded over {run.shard}, "
              f"master / compute {run.dtypes}, S={run.seq_len}, micro-batch {run.micro}, nsp_mode={run.nsp_mode}, "
              f"activation checkpointing {'on' if run.checkpointing else 'off'}")
    sizes = (f"  model states {_size(sum(est.states.values()))} ({states}); activations {_size(est.activations)} "
             f"(largest of: {parts}); total {_size(est.total)}")
    lines = [header, sizes]
    if run.nsp:
        other = "fast" if run.nsp_mode == "faithful" else "faithful"
        other_total = estimate(model, replace(run, nsp_mode=other)).total
        lines.append(f"  with refine.nsp_mode={other}: total {_size(other_total)}")
    lines += [f"  note: {note}" for note in model.notes]
    if memory is None:
        lines.append(f"  no fit check: trainer.device={device} (set {MEMORY_ENV}=<GiB> to check against a GPU size)")
    elif est.total > FIT_FRACTION * memory[0]:
        lines.append(
            f"refine: WARNING: the estimated {_size(est.total)} per GPU will not fit {FIT_FRACTION:.0%} of the "
            f"{_size(memory[0])} of one GPU ({memory[1]}); the largest part is {est.largest_part}. Fix: a smaller "
            "refine.micro_batch_size_per_gpu / refine.log_prob_micro_batch_size_per_gpu, "
            "actor_rollout_ref.model.enable_gradient_checkpointing=true, refine.nsp_mode=faithful (the fast update "
            "checkpoints whole segments, not layers), or more GPUs (trainer.n_gpus_per_node / trainer.nnodes)")
    else:
        lines.append(f"  fits: {_size(est.total)} of {_size(memory[0])} ({memory[1]})")
    return lines


def print_estimate(config, rc, device: str) -> None:
    """Print the estimate of a prepared config (`refine.main.prepare`, before Ray)."""
    model = model_shape(str(config.actor_rollout_ref.model.path), on_cuda=device == "cuda")
    for line in report_lines(model, run_shape(config, rc), device, device_memory(device)):
        print(line, flush=True)
