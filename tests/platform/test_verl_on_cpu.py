"""verl 0.9.1 on CPU through Ray: `RayWorkerGroup` of verl's own `ActorRolloutRefWorker` (role "actor").

With world size 1 and 2 (FSDP2 sharded over gloo), the worker group builds a tiny model from a local directory,
computes log-probs that must equal a plain fp32 per-sequence forward of the same checkpoint within 1e-5, and one
`update_actor` step (PPO-clip, advantages +1) must change the weights so that the sampled tokens become likelier.

The workers for the three models share their Ray processes the way `RayPPOTrainer.init_workers` colocates roles
(`create_colocated_worker_cls` + `spawn`), so each world size pays the process start-up (torch, verl, fla imports)
once instead of once per model.
"""

from __future__ import annotations


import pytest
import torch

pytestmark = pytest.mark.slow

LOGPROB_TOL = 1e-5
PROMPT_LEN, RESPONSE_LEN, BATCH = 8, 6, 4
# (left pads in the prompt, right pads in the response) per row: exercises both paddings verl removes.
PADDING = [(0, 0), (3, 0), (1, 2), (5, 3)]


# --------------------------------------------------------------------------------------------------------------
# Tiny models (built from config, saved with the tiny tokenizer)
# --------------------------------------------------------------------------------------------------------------


def _llama_config():
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )


def _deltanet_config():
    from refine.models.tiny import tiny_deltanet_config

    return tiny_deltanet_config(vocab_size=512)


def _lact_config():
    from refine.models.lact import tiny_lact_config

    return tiny_lact_config(vocab_size=512)


MODEL_BUILDERS = {"llama": _llama_config, "deltanet": _deltanet_config, "lact": _lact_config}


def save_tiny_model(config, tokenizer, path) -> str:
    """Random-init a causal LM from `config` (seeded) and save it with `tokenizer` under `path`."""
    import refine.models  # noqa: F401 - registers fla / LaCT with the Auto classes
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


# --------------------------------------------------------------------------------------------------------------
# verl config: compose verl's packaged ppo_trainer config with the overrides a CPU fp32 run needs
# --------------------------------------------------------------------------------------------------------------


def actor_rollout_ref_config(model_path: str, micro_batch: int):
    """`actor_rollout_ref` node of verl's `ppo_trainer` config for an fp32 FSDP2 actor on CPU."""
    from hydra import compose, initialize_config_module

    overrides = [
        f"actor_rollout_ref.model.path={model_path}",
        "actor_rollout_ref.model.external_lib=refine.models",
        "actor_rollout_ref.model.use_remove_padding=False",  # fla would leak state across packed sequences
        "actor_rollout_ref.model.enable_gradient_checkpointing=False",
        "+actor_rollout_ref.model.override_config.attn_implementation=eager",
        "actor_rollout_ref.actor.strategy=fsdp2",
        "actor_rollout_ref.actor.fsdp_config.dtype=float32",
        "+actor_rollout_ref.actor.fsdp_config.mixed_precision.param_dtype=fp32",
        "actor_rollout_ref.actor.fsdp_config.use_torch_compile=False",  # inductor on CPU costs a compiler run
        "actor_rollout_ref.actor.use_torch_compile=False",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={BATCH}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={micro_batch}",
        "actor_rollout_ref.actor.optim.lr=1e-3",
        "actor_rollout_ref.actor.use_kl_loss=False",
        # The ref policy is a forward-only FSDP2 engine: verl gives it CPUOffloadPolicy(pin_memory=True).
        "actor_rollout_ref.ref.fsdp_config.dtype=float32",
        "+actor_rollout_ref.ref.fsdp_config.mixed_precision.param_dtype=fp32",
        "actor_rollout_ref.ref.fsdp_config.use_torch_compile=False",
        "actor_rollout_ref.ref.use_torch_compile=False",
        f"actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu={micro_batch}",
        "actor_rollout_ref.rollout.name=vllm",  # mandatory key; role "actor" never builds a rollout
        "actor_rollout_ref.rollout.n=1",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={micro_batch}",
        "trainer.device=cpu",
    ]
    with initialize_config_module("verl.trainer.config", version_base=None):
        config = compose("ppo_trainer", overrides=overrides)
    return config.actor_rollout_ref


# --------------------------------------------------------------------------------------------------------------
# Batch in verl's left/right-padded layout, and the independent reference
# --------------------------------------------------------------------------------------------------------------


def padded_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """prompts (left-padded), responses (right-padded), input_ids, attention_mask, position_ids, response_mask."""
    generator = torch.Generator().manual_seed(seed)
    prompts = torch.randint(3, 512, (BATCH, PROMPT_LEN), generator=generator)
    responses = torch.randint(3, 512, (BATCH, RESPONSE_LEN), generator=generator)
    prompt_mask = torch.ones(BATCH, PROMPT_LEN, dtype=torch.long)
    response_mask = torch.ones(BATCH, RESPONSE_LEN, dtype=torch.long)
    for row, (left, right) in enumerate(PADDING):
        prompt_mask[row, :left] = 0
        prompts[row, :left] = 2  # pad = EOS, as on the real checkpoints
        if right:
            response_mask[row, -right:] = 0
            responses[row, -right:] = 2
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1)
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    return {
        "prompts": prompts,
        "responses": responses,
        "input_ids": torch.cat([prompts, responses], dim=1),
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "response_mask": response_mask,
    }


def reference_log_probs(model_path: str, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-sequence fp32 forward of the saved checkpoint, no padding at all: log p(response token | prefix)."""
    import refine.models  # noqa: F401
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    out = torch.zeros(BATCH, RESPONSE_LEN)
    with torch.no_grad():
        for row in range(BATCH):
            keep = batch["attention_mask"][row].bool()
            tokens = batch["input_ids"][row][keep].unsqueeze(0)
            log_probs = torch.log_softmax(model(input_ids=tokens).logits.float(), dim=-1)[0]
            n_response = int(batch["response_mask"][row].sum())
            n_prompt = tokens.shape[1] - n_response
            targets = tokens[0, n_prompt:]
            out[row, :n_response] = log_probs[n_prompt - 1 : n_prompt - 1 + n_response].gather(
                -1, targets.unsqueeze(-1)
            )[:, 0]
    return out


def _to_verl_tensordict(batch: dict[str, torch.Tensor], **meta):
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import left_right_2_no_padding

    data = tu.get_tensordict(tensor_dict=dict(batch), non_tensor_dict={"temperature": 1.0, **meta})
    return left_right_2_no_padding(data)


def worker_log_probs(worker_group, batch) -> torch.Tensor:
    """verl's `compute_log_prob` RPC, converted back to [B, response_len] as RayPPOTrainer does."""
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import no_padding_2_padding

    data = _to_verl_tensordict(batch, calculate_entropy=True, compute_loss=False)
    output = worker_group.compute_log_prob(data)
    log_probs = no_padding_2_padding(tu.get(output, "log_probs"), data).float()
    return log_probs * batch["response_mask"]


def ref_worker_log_probs(worker_group, batch) -> torch.Tensor:
    """verl's `compute_ref_log_prob` RPC (role "ref"), converted back to [B, response_len]."""
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import no_padding_2_padding

    data = _to_verl_tensordict(batch, calculate_entropy=False, compute_loss=False)
    output = worker_group.compute_ref_log_prob(data)
    return no_padding_2_padding(tu.get(output, "log_probs"), data).float() * batch["response_mask"]


def worker_update(worker_group, batch, old_log_probs, advantages):
    """One verl `update_actor` call (one mini-batch, one epoch) with the stock PPO loss."""
    from verl.utils import tensordict_utils as tu

    train_batch = {**batch, "old_log_probs": old_log_probs, "advantages": advantages}
    data = _to_verl_tensordict(
        train_batch,
        calculate_entropy=False,
        global_batch_size=BATCH,
        mini_batch_size=BATCH,
        epochs=1,
        seed=0,
        dataloader_kwargs={"shuffle": False},
        compute_loss=True,
    )
    return tu.get(worker_group.update_actor(data), "metrics")


def build_colocated_actor_groups(configs: dict, world_size: int):
    """One verl worker group per entry of `configs` ({name: (actor_rollout_ref config, role)}), all of verl's
    `ActorRolloutRefWorker`, colocated in the same `world_size` CPU processes exactly as
    `RayPPOTrainer.init_workers` colocates roles. Returns (groups, owner, pool).
    """
    import ray
    from verl.single_controller.ray import RayClassWithInitArgs, RayResourcePool, RayWorkerGroup
    from verl.single_controller.ray.base import create_colocated_worker_cls
    from verl.workers.engine_workers import ActorRolloutRefWorker

    class_dict = {
        name: RayClassWithInitArgs(cls=ray.remote(ActorRolloutRefWorker), config=config, role=role)
        for name, (config, role) in configs.items()
    }
    pool = RayResourcePool(process_on_nodes=[world_size], use_gpu=True, max_colocate_count=1)
    owner = RayWorkerGroup(
        resource_pool=pool, ray_cls_with_init=create_colocated_worker_cls(class_dict), device_name="cpu"
    )
    return owner.spawn(prefix_set=class_dict.keys()), owner, pool


def release(group, pool) -> None:
    import ray

    for worker in group.workers:
        ray.kill(worker)
    for placement_group in pool.pgs or []:
        ray.util.remove_placement_group(placement_group)


# --------------------------------------------------------------------------------------------------------------
# Fixtures: models once per module, one colocated worker set per world size
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model_dirs(tiny_tokenizer, tmp_path_factory) -> dict[str, str]:
    """{builder: saved model dir} for every builder."""
    root = tmp_path_factory.mktemp("tiny_models")
    return {name: save_tiny_model(builder(), tiny_tokenizer, root / name) for name, builder in MODEL_BUILDERS.items()}


@pytest.fixture(scope="module", params=[1, 2], ids=lambda world_size: f"world{world_size}")
def actor_groups(request, ray_cpu_cluster, tiny_model_dirs):
    """(world_size, {builder: actor worker group, "llama_ref": ref worker group}), two micro-batches per rank."""
    world_size = request.param
    micro_batch = BATCH // world_size // 2
    configs = {name: (actor_rollout_ref_config(path, micro_batch), "actor") for name, path in tiny_model_dirs.items()}
    configs["llama_ref"] = (actor_rollout_ref_config(tiny_model_dirs["llama"], micro_batch), "ref")
    groups, owner, pool = build_colocated_actor_groups(configs, world_size)
    yield world_size, groups
    release(owner, pool)


# --------------------------------------------------------------------------------------------------------------
# The test
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("builder", list(MODEL_BUILDERS))
def test_actor_worker_group_logprobs_and_update(builder, actor_groups, tiny_model_dirs):
    world_size, groups = actor_groups
    group = groups[builder]
    model_path = tiny_model_dirs[builder]
    batch = padded_batch()
    expected = reference_log_probs(model_path, batch)

    assert group.world_size == world_size
    group.init_model()

    before = worker_log_probs(group, batch)
    error = (before - expected).abs().max().item()
    assert error <= LOGPROB_TOL, f"{builder} world {world_size}: log-prob error {error:.2e} > {LOGPROB_TOL}"

    advantages = batch["response_mask"].float()  # +1 on every response token: PPO must raise their log-probs
    metrics = worker_update(group, batch, before, advantages)
    after = worker_log_probs(group, batch)

    mask = batch["response_mask"].bool()
    change = (after - before)[mask]
    print(f"{builder} world {world_size}: log-prob error {error:.2e}, after update mean/max change "
          f"{change.mean().item():.2e}/{change.abs().max().item():.2e}")
    assert change.abs().max().item() > 1e-4, f"update_actor left the weights unchanged: {metrics}"
    assert change.mean().item() > 0, f"PPO step with positive advantages lowered log-probs: {change}"


def test_ref_worker_forward_only_fsdp2_with_cpu_offload_policy(actor_groups, tiny_model_dirs):
    """Role "ref" builds verl's forward-only FSDP2 engine, which uses CPUOffloadPolicy (unpinned by the plugin)."""
    world_size, groups = actor_groups
    batch = padded_batch(seed=1)
    expected = reference_log_probs(tiny_model_dirs["llama"], batch)
    group = groups["llama_ref"]
    group.init_model()
    error = (ref_worker_log_probs(group, batch) - expected).abs().max().item()
    print(f"ref world {world_size}: log-prob error {error:.2e}")
    assert error <= LOGPROB_TOL, f"ref world {world_size}: log-prob error {error:.2e} > {LOGPROB_TOL}"
