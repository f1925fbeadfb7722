"""Fast = faithful on fla's real kernels: `REFINE_FLA_KERNELS=interpret python tests/trainer/fast_nsp_interpret_probe.py
OUT.json` (a process of its own: Triton's interpreter is chosen before fla is imported). Judged by
`tests/trainer/test_fast_nsp_interpret.py`.

The comparisons of `tests/trainer/test_fast_nsp.py` (same documents, positions, injected responses, update plan),
with the tiny DeltaNet / GatedDeltaNet in fp16 (the dtype of this tier) running fla's Triton kernels: old log-probs,
response hidden states and rewards of the fast rollout vs the faithful re-encoding; NTP and PPO losses, the update
metrics and every parameter gradient of the fast update vs the faithful one. Records the worst differences.
"""

from __future__ import annotations

import json
import sys
import time

import torch

import refine.models  # noqa: F401  (fla's kernels, interpreted)
from refine.models import fla_models
from refine.nsp.prefixes import gather_target_hidden
from refine.nsp.rewards import all_sequence_rewards
from refine.worker import model_ops
from refine.worker.fast import ops as fast_ops
from refine.worker.fast import update as fast_update

def _load_fast_nsp_helpers():
    """tests/trainer/test_fast_nsp.py by path (a `tests` package elsewhere on sys.path may shadow this folder)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).with_name("test_fast_nsp.py")
    spec = importlib.util.spec_from_file_location("fast_nsp_helpers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_helpers = _load_fast_nsp_helpers()
# Shorter documents than test_fast_nsp.py's 160 tokens (the interpreter is ~1000x slower than the stand-ins), still
# crossing fla's 64-token switch (faithful prefixes of 80 tokens take the chunk kernels, the fast mode's segments
# and decoding the fused-recurrent ones). Row 0 keeps its 30 left pads; row 1 has two positions on one token.
_helpers.S = 80
_helpers.POSITIONS = torch.tensor([[35, 36, 60], [20, 20, 50]])
POSITIONS, K = _helpers.POSITIONS, _helpers.K
build_model, documents, faithful_rollout_inputs = _helpers.build_model, _helpers.documents, _helpers.faithful_rollout_inputs
floats, gradients, plan_for, random_responses = (_helpers.floats, _helpers.gradients, _helpers.plan_for,
                                                 _helpers.random_responses)


def rollout_differences(model, ids, mask) -> dict:
    rollout = faithful_rollout_inputs(ids, mask, 1)
    responses = random_responses(len(rollout))
    with torch.no_grad():
        old_ref, hidden_ref = model_ops.old_log_probs_and_hidden(
            model, rollout.input_ids, rollout.attention_mask, responses, temperature=0.7, micro_batch_size=6)
        fast = fast_ops.fast_rollout(model, ids, mask, POSITIONS, ttt_n=1, response_length=K, temperature=0.7,
                                     processors=None, micro_batch_size=6, generator=None, responses=responses)
        full = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
    targets = gather_target_hidden(full, POSITIONS, K).flatten(0, 1)
    ref_rewards = all_sequence_rewards(hidden_ref.float(), targets.float(), responses, rollout.ground_truth_ids)
    fast_rewards = all_sequence_rewards(fast.response_hidden.float(), targets.float(), responses,
                                        fast.ground_truth_ids)
    out = {"dtype": str(fast.old_log_probs.dtype),
           "old_log_probs": {"diff": (fast.old_log_probs - old_ref).abs().max().item(),
                             "scale": old_ref.abs().max().item()},
           "response_hidden": {"diff": (fast.response_hidden - hidden_ref).float().abs().max().item(),
                               "scale": hidden_ref.float().abs().max().item()},
           "ground_truth_ids_equal": bool(torch.equal(fast.ground_truth_ids, rollout.ground_truth_ids))}
    for kind, value in ref_rewards.items():
        out[f"reward_{kind}"] = {"diff": (fast_rewards[kind] - value).abs().max().item(),
                                 "scale": value.abs().max().item()}
    return out


def update_differences(model, ids, mask) -> dict:
    rollout = faithful_rollout_inputs(ids, mask, 1)
    n = len(rollout)
    responses = random_responses(n)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        current, _ = model_ops.old_log_probs_and_hidden(model, rollout.input_ids, rollout.attention_mask, responses,
                                                        temperature=1.0, micro_batch_size=n)
    old = current.float() + 0.4 * torch.randn(n, K, generator=gen)
    advantages = torch.randn(n, 1, generator=gen).expand(n, K).clone()
    plan = plan_for(1, 2)
    pair = plan.mini_batches[0]
    docs = {"input_ids": ids, "attention_mask": mask}
    model.zero_grad()
    ref = model_ops.combined_backward(
        model, docs, {"prompts": rollout.input_ids, "prompt_mask": rollout.attention_mask, "responses": responses,
                      "old_log_probs": old, "advantages": advantages}, pair, plan, temperature=1.0, mask_pads=False)
    ref_grads = gradients(model)
    model.zero_grad()
    fast = fast_update.fast_backward(
        model, docs, {"positions": POSITIONS, "responses": responses, "old_log_probs": old, "advantages": advantages},
        pair, plan, n_rows_per_doc=POSITIONS.shape[1], ttt_n=1, temperature=1.0, mask_pads=False)
    fast_grads = gradients(model)
    model.zero_grad()
    (ref_sft, ref_pg, ref_metrics), (fast_sft, fast_pg, fast_metrics) = floats(ref), floats(fast)
    relative = {name: ((fast_grads[name].float() - g.float()).norm() / g.float().norm().clamp_min(1e-12)).item()
                for name, g in ref_grads.items()}
    worst = max(relative, key=relative.get)
    return {
        "ntp_loss": {"diff": max(abs(a - b) for a, b in zip(fast_sft, ref_sft)), "scale": max(map(abs, ref_sft))},
        "pg_loss": {"diff": max(abs(a - b) for a, b in zip(fast_pg, ref_pg)), "scale": max(map(abs, ref_pg))},
        "metrics": {key: {"diff": max(abs(a - b) for a, b in zip(fast_metrics[key], values)),
                          "scale": max(map(abs, values))} for key, values in ref_metrics.items()},
        "clipfrac": max(ref_metrics["actor/pg_clipfrac_ttt"]),
        "gradients": {"worst_parameter": worst, "worst_relative": relative[worst], "n_parameters": len(relative),
                      "all_nonzero": all(g.float().norm().item() > 0 for g in ref_grads.values())},
    }


def main(path: str) -> None:
    assert fla_models.kernel_mode() == "interpret", f"kernel mode is {fla_models.kernel_mode()}, not interpret"
    torch.set_num_threads(1)
    out = {}
    for kind in ("delta_net", "gated_deltanet"):
        model = build_model(kind).half()
        ids, mask = documents()
        start = time.perf_counter()
        out[kind] = {"rollout": rollout_differences(model, ids, mask)}
        out[kind]["update"] = update_differences(model, ids, mask)
        out[kind]["time_s"] = round(time.perf_counter() - start, 1)
    with open(path, "w") as handle:
        json.dump(out, handle, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
