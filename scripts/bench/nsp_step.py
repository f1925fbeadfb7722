"""One inner step, side by side on the same model, documents and positions: (a) NTP only, (b) faithful ReFINE,
(c) fast ReFINE (`refine.nsp_mode=fast`), at two document lengths.

    .venv/bin/python scripts/bench/nsp_step.py [--models <family> ...] [--lengths 512 2048]
        [--batch 2] [--chunks 8] [--k 5] [--repeats 3] [--threads 2] [--gradient-checkpointing]

Runs the worker-side functions the trainer's RPCs run (`model_ops`, `fast_ops`), on one process with AdamW, so
each figure is pure compute (no Ray). Every mode starts from the same weights and optimiser state; the modes take
turns in each round and a ratio is the median over rounds of ratios taken within one round (robust to a machine
whose load drifts). Prints per model and length: wall time per step (fastest round) and the ratios faithful/NTP
and fast/NTP with their spread over rounds, each phase's share, peak memory
(RSS above the start of the step on CPU; CUDA peak allocated on a GPU), decode time per generated token at both
lengths, and the bytes crossing the driver<->worker boundary per document at S = 16K, C = 8, H = 2048 (from the
shapes and dtypes of the RPC messages). The last lines are machine-readable:

    delta_net S=2048 faithful/ntp 9.13 fast/ntp 1.45

`--models` takes any family of the table (refine/models/families.py; default delta_net gated_deltanet lact); a
family whose fast mode is refused runs NTP and faithful only ("fast/ntp refused"). LaCT runs with
`lact_exact_padding=True` in every mode (the fast mode requires it; faithful and NTP use the same
model so that the ratios compare like with like).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import threading
import time

import psutil
import torch

from refine.nsp.advantages import grpo_advantages
from refine.nsp.prefixes import build_rollout_batch, expand_targets
from refine.nsp.rewards import all_sequence_rewards, token_level_rewards
from refine.nsp.update_plan import normalized_ppo_mini_batch_rows, plan_combined_update, plan_ntp_only_update
from refine.settings import NspSettings
from refine.worker import model_ops
from refine.worker.fast import ops as fast_ops
from refine.worker.fast.step import run_fast_step

PAD = 2


# the tiny configs of the table, 128 wide with a 4096 vocabulary; per family what that width needs
BENCH_SIZE = dict(vocab_size=4096, hidden_size=128)
FAMILY_SIZE = {
    "gated_deltanet": dict(head_dim=64),
    "mamba2": dict(num_heads=16),  # heads = expand * hidden / head_dim
    # exact padding: the fast mode needs it, and every mode runs the same model
    "lact": dict(lact_chunk_size=256, window_size=256, lact_exact_padding=True),
}


def build(name: str):
    import refine.models  # noqa: F401
    from transformers import AutoModelForCausalLM

    from refine.models.tiny import tiny_config

    config = tiny_config(name, **BENCH_SIZE, **FAMILY_SIZE.get(name, {}))
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).float()


def fast_refusal(model) -> str | None:
    from refine.models.families import config_view, family_of

    return family_of(model.config).fast_mode_refusal(config_view(model.config))


def track_live_memory_in_rss() -> None:
    """On glibc, serve every allocation above 64 KiB by mmap and return it on free, so RSS follows the live tensors
    (by default glibc raises that threshold as blocks are freed and keeps them, hiding later peaks)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD (fixed: no dynamic growth)
        libc.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak RSS (CPU) or peak allocated CUDA memory above the level at entry, in MiB."""

    def __enter__(self):
        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        self.process, self.base, self.peak, self.running = psutil.Process(), psutil.Process().memory_info().rss, 0, True

        def sample():
            while self.running:
                self.peak = max(self.peak, self.process.memory_info().rss)
                time.sleep(0.002)

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.mib = (torch.cuda.max_memory_allocated() - self.base) / 2**20
        else:
            self.running = False
            self.thread.join()
            self.mib = max(0, self.peak - self.base) / 2**20


class Phases:
    def __init__(self):
        self.seconds: dict[str, float] = {}

    def __call__(self, key):
        return fast_ops.timed(self.seconds, key)


def ntp_step(model, opt, ids, mask, args, phases):
    plan = plan_ntp_only_update(ids.shape[0], micro_batch_size=args.micro)
    with phases("update"):
        opt.zero_grad()
        model_ops.ntp_only_backward(model, {"input_ids": ids, "attention_mask": mask}, plan, mask_pads=False)
        PlainEngine(model, opt).optimizer_step()


def grpo(response_hidden, target_hidden, responses, ground_truth, uids):
    rewards = all_sequence_rewards(response_hidden, target_hidden, responses, ground_truth)
    mask = torch.ones_like(responses, dtype=torch.float32)
    return grpo_advantages(token_level_rewards(rewards["cosine_similarity"], mask), mask, uids)[0]


def update_plan(args, n_docs):
    rows = normalized_ppo_mini_batch_rows(n_docs, n_chunks=args.chunks, ttt_n=1, world_size=1)
    return plan_combined_update(n_docs, n_docs * args.chunks, ppo_mini_batch_rows=rows, micro_batch_size=args.micro,
                                n_chunks=args.chunks, ttt_n=1, sft_loss_coef=1.0, ppo_loss_coef=1.0)


def analysis(model, ids, mask, args, phases):
    with phases("analysis"), torch.no_grad():
        return model_ops.analyse(model, ids, mask, n_chunks=args.chunks, response_length=args.k, sampling="entropy",
                                 micro_batch_size=args.micro, generator=torch.Generator().manual_seed(1))


def faithful_step(model, opt, ids, mask, args, phases):
    with PlainEngine(model, opt).eval_mode():  # as the worker RPCs: eval mode outside the update
        found = analysis(model, ids, mask, args, phases)
        rollout = build_rollout_batch(ids, mask, found.positions, response_length=args.k, pad_token_id=PAD)
        torch.manual_seed(2)
        with phases("generate"):
            responses = model_ops.generate_responses(model, rollout.input_ids, rollout.attention_mask,
                                                     response_length=args.k, temperature=1.0, top_p=1.0, top_k=0,
                                                     micro_batch_size=args.micro, eos_token_id=PAD, pad_token_id=PAD)
        with phases("old_log_prob"):
            old, hidden = model_ops.old_log_probs_and_hidden(model, rollout.input_ids, rollout.attention_mask,
                                                             responses, temperature=1.0, micro_batch_size=args.micro)
    advantages = grpo(hidden, expand_targets(found.target_hidden), responses, rollout.ground_truth_ids, rollout.uid)
    plan = update_plan(args, ids.shape[0])
    ppo = {"prompts": rollout.input_ids, "prompt_mask": rollout.attention_mask, "responses": responses,
           "old_log_probs": old, "advantages": advantages}
    with phases("update"):
        for pair in plan.mini_batches:
            opt.zero_grad()
            model_ops.combined_backward(model, {"input_ids": ids, "attention_mask": mask}, ppo, pair, plan,
                                        temperature=1.0, mask_pads=False)
            PlainEngine(model, opt).optimizer_step()
    return rollout.input_ids.shape[0] * args.k


class PlainEngine:
    """The engine methods `run_fast_step` calls, over a plain model and optimiser (verl's FSDP engine offers the
    same names)."""

    def __init__(self, model, opt):
        self.model, self.opt = model, opt

    @contextlib.contextmanager
    def eval_mode(self):
        self.model.eval()
        yield
        self.model.train()

    @contextlib.contextmanager
    def train_mode(self):
        self.model.train()
        yield

    def optimizer_zero_grad(self):
        self.opt.zero_grad()

    def optimizer_step(self):
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        return norm

    def lr_scheduler_step(self):
        return self.opt.param_groups[0]["lr"]


def fast_step(model, opt, ids, mask, args, phases):
    settings = NspSettings(n_chunks=args.chunks, n_per_prefix=1, response_length=args.k, sampling="entropy",
                           temperature=1.0, top_p=1.0, top_k=0, reward="cosine_similarity", sft_coef=1.0,
                           ppo_coef=1.0, mini_batch_size=ids.shape[0], micro_batch_size_per_gpu=args.micro,
                           log_prob_micro_batch_size_per_gpu=args.micro, mask_pads=False, world_size=1,
                           pad_token_id=PAD, seed=1)
    tensors, metrics = run_fast_step(PlainEngine(model, opt), model, ids, mask, settings, eos_token_id=PAD)
    names = {"forward": "analysis", "update_actor": "update"}
    for key, values in metrics.items():
        if key.startswith("timing_s/"):
            phase = key[len("timing_s/"):-len("_ttt")]
            phases.seconds[names.get(phase, phase)] = values[0]
    return tensors["responses"].numel()


def measure(name, model, seq_len, args, *, memory: bool):
    """{mode: {wall, phases, generated, ratios}} or {mode: peak MiB} with `memory`.

    The modes take turns within each of `args.repeats` rounds, and each ratio to NTP is taken within a round, so
    load that drifts over the run (other processes on the machine) shifts both sides of a ratio alike. `wall` and
    `phases` are the fastest round's; `ratios` holds every round's ratio to NTP.
    """
    ids = torch.randint(3, model.config.vocab_size, (args.batch, seq_len), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    start_state = copy.deepcopy(model.state_dict())
    modes = {"ntp": ntp_step, "faithful": faithful_step, "fast": fast_step}
    if fast_refusal(model):  # a family whose fast mode is refused runs NTP and faithful only
        del modes["fast"]
    results: dict = {}
    for _ in range(1 if memory else args.repeats):
        walls = {}
        for mode, step in modes.items():
            model.load_state_dict(start_state)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
            model.train()
            phases = Phases()
            with PeakMemory() as peak:
                t0 = time.perf_counter()
                generated = step(model, opt, ids, mask, args, phases)
                wall = time.perf_counter() - t0
            walls[mode] = wall
            best = results.get(mode)
            if best is None or wall < best["wall"]:
                results[mode] = {"wall": wall, "phases": dict(phases.seconds), "generated": generated,
                                 "mib": peak.mib, "ratios": best["ratios"] if best else []}
        for mode in modes:
            results[mode]["ratios"].append(walls[mode] / walls["ntp"])
    model.load_state_dict(start_state)
    return {mode: res["mib"] for mode, res in results.items()} if memory else results


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def boundary_bytes(seq_len=16384, chunks=8, hidden=2048, k=5) -> dict[str, float]:
    """MiB crossing the driver<->worker boundary per document (B = 1), from the tensors of the RPC messages as
    `refine.driver.nsp_step` builds them (documents via `wire_documents`; per-row tensors in their dtypes)."""
    from verl import DataProto

    from refine.driver.nsp_step import wire_documents

    rows = chunks
    docs = wire_documents(DataProto.from_dict(tensors={
        "input_ids": torch.zeros(1, seq_len, dtype=torch.long), "attention_mask": torch.ones(1, seq_len, dtype=torch.long)}))
    positions = {"positions": torch.zeros(1, chunks, dtype=torch.long)}
    per_row = lambda *shape, dtype=torch.float32: torch.zeros(1, rows, *shape, dtype=dtype)  # noqa: E731
    faithful = [
        docs, {"positions": positions["positions"], "target_hidden": torch.zeros(1, chunks, k, hidden)},  # analyse
        {**docs, **positions}, {"responses": per_row(k, dtype=torch.long)},  # generate
        {**docs, **positions, "responses": per_row(k, dtype=torch.long)},  # old log-probs in
        {"old_log_probs": per_row(k), "response_hidden": per_row(k, hidden)},  # out
        {**docs, **positions, "responses": per_row(k, dtype=torch.long), "old_log_probs": per_row(k),
         "advantages": per_row(k)},  # update
    ]
    fast = [
        docs,  # nsp_fast_step in; out: per-row scalars
        {"responses": per_row(k, dtype=torch.long), "old_log_probs": per_row(k), "scores": per_row(k),
         "advantages": per_row(k), "returns": per_row(k), "prompt_length": per_row(dtype=torch.long),
         "position": per_row(dtype=torch.long), **{f"reward_{i}": per_row() for i in range(3)}},
    ]

    def mib(messages):
        return sum(t.numel() * t.element_size() for message in messages for t in message.values()) / 2**20

    return {"faithful": mib(faithful), "fast": mib(fast)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    from refine.models.families import family_names

    parser.add_argument("--models", nargs="+", default=["delta_net", "gated_deltanet", "lact"],
                        choices=family_names(), help="families of refine/models/families.py")
    parser.add_argument("--lengths", nargs="+", type=int, default=[512, 2048])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--micro", type=int, default=1, help="micro-batch of every phase (documents / rows)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; in each the modes take turns. Ratios: the median over rounds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass (halves the run)")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="activation checkpointing as on a GPU run (faithful/NTP: per layer; fast: per segment)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    summary, decode, timings = [], {}, {}
    models = {name: build(name) for name in args.models}
    if args.gradient_checkpointing:
        for model in models.values():
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for name, model in models.items():
        for seq_len in args.lengths:
            timings[name, seq_len] = measure(name, model, seq_len, args, memory=False)
    # memory last: the allocator setting it needs slows allocation down
    if not args.no_memory:
        track_live_memory_in_rss()
    for name, model in models.items():
        params = sum(p.numel() for p in model.parameters())
        for seq_len in args.lengths:
            results = timings[name, seq_len]
            peaks = ({mode: 0.0 for mode in results} if args.no_memory
                     else measure(name, model, seq_len, args, memory=True))
            print(f"\n{name} ({params / 1e6:.2f}M params) S={seq_len} B={args.batch} C={args.chunks} k={args.k}")
            for mode, res in results.items():
                shares = ", ".join(f"{key} {100 * value / res['wall']:.0f}%" for key, value in res["phases"].items())
                peak = f"{peaks[mode]:7.1f}" if peaks[mode] >= 1 else "     <1"  # below what RSS sampling sees
                peak = "      -" if args.no_memory else peak
                spread = f"x{median(res['ratios']):5.2f} (rounds {min(res['ratios']):.2f}-{max(res['ratios']):.2f})"
                print(f"  {mode:9s} {res['wall']:7.3f} s  {spread}  peak {peak} MiB  [{shares}]")
                if mode != "ntp":
                    key = "generate" if mode == "faithful" else "gen"
                    decode[(name, mode, seq_len)] = res["phases"][key] / res["generated"]
            fast = f"{median(results['fast']['ratios']):.2f}" if "fast" in results else "refused"
            summary.append(f"{name} S={seq_len} faithful/ntp {median(results['faithful']['ratios']):.2f} "
                           f"fast/ntp {fast}")
    lo, hi = min(args.lengths), max(args.lengths)
    print(f"\nrollout time per generated token, prefix {lo} -> {hi} (fast: decoding from the states; the state pass "
          "is a separate phase above)")
    for (name, mode, seq_len), value in sorted(decode.items()):
        if seq_len == hi and (name, mode, lo) in decode:
            ratio = value / decode[(name, mode, lo)]
            print(f"  {name:15s} {mode:9s} {1e3 * decode[(name, mode, lo)]:.2f} -> {1e3 * value:.2f} ms  "
                  f"ratio {ratio:.2f}")
    sizes = boundary_bytes()
    print(f"\ndriver<->worker bytes per document at S=16K, C=8, H=2048: faithful {sizes['faithful']:.2f} MiB, "
          f"fast {sizes['fast']:.3f} MiB")
    print()
    for line in summary:
        print(line)


if __name__ == "__main__":
    main()
