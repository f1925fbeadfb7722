"""The ReFINE study (issue 23: context extension with planted key -> value retrieval), one command:

    .venv/bin/python scripts/repro/run.py              # full study; writes docs/results.json, results.md, results/*.png
    .venv/bin/python scripts/repro/run.py --quick      # the same pipeline at toy sizes (CI), into the work dir
    .venv/bin/python scripts/repro/run.py --report-only   # rewrite docs/results.md and plots from docs/results.json

Stages, each cached under the work dir (default runs/repro/full or runs/repro/quick) and skipped when done:
1. data splits by document; planted-pair data (scripts/repro/kv.py); the copy-warmed DeltaNet pre-trained at L;
2. mid-training at 4L per seed: NTP, ReFINE, the positive control (NTP, 2x updates) and the two ablations;
   post-training per seed: inner NTP + task SFT (control) vs inner NTP + NSP-GRPO + task SFT (ReFINE);
3. test-time training per seed from the ReFINE post-trained model: inner NTP vs inner NTP + NSP-GRPO;
4. the measures (scripts/repro/measures.py) on every model, then the results file and the report.
Sizes: scripts/repro/sizes.py. Analysis: scripts/repro/stats.py (fixed before the run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

# one intra-op thread: on 2 shared cores a contended thread pool is many times slower; inherited by the trainer
# runs and their Ray workers
os.environ.setdefault("OMP_NUM_THREADS", "1")
# `scripts` is not a package here (a site-packages module of that name shadows it): import `repro` from scripts/
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from repro import kv, measures, pretrain, report, runs
from repro.sizes import FULL, QUICK, STUDY_VERSION

REPO = Path(__file__).resolve().parents[2]
EVAL_SEED, TTT_SEED, POST_SEED, MID_SEED = 1234, 4321, 99, 7


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, non-zero exit (argparse prints usage + error over two lines)
        raise SystemExit(f"run.py: {message}")


def build_data(work: Path, sizes, splits: dict, tokenizer) -> tuple[dict, list, list]:
    """Planted-pair trainer files (cached) and the held-out evaluation / TTT items (rebuilt, deterministic)."""
    import math

    import pandas as pd

    vocab = kv.Vocab(tokenizer)
    streams = {s: measures.token_stream(tokenizer, p)[0] for s, p in splits.items()}
    eval_items = kv.eval_items(tokenizer, streams["test"], vocab, sizes.bins, sizes.items_per_bin, EVAL_SEED)
    ttt_items = kv.eval_items(tokenizer, streams["test"], vocab, [sizes.ttt_bin], sizes.ttt_items, TTT_SEED)
    files = {name: work / "data" / f"{name}.parquet" for name in ("mid_train", "mid_val", "post_train", "post_val", "ttt")}
    if not all(p.exists() for p in files.values()):
        rows = {s: list(pd.read_parquet(p).text) for s, p in splits.items()}
        need = sizes.control_steps * sizes.mid_batch
        docs = []
        for rep in range(math.ceil(need / len(rows["train"])) + 1):  # fresh pairs in every repetition
            docs += kv.planted_documents(tokenizer, rows["train"], vocab, sizes.mid_len, sizes.mid_pairs, MID_SEED + rep)
        pd.DataFrame({"text": docs}).to_parquet(files["mid_train"], index=False)
        val_docs = kv.planted_documents(tokenizer, rows["val"][:8], vocab, sizes.mid_len, sizes.mid_pairs, MID_SEED)
        pd.DataFrame({"text": val_docs}).to_parquet(files["mid_val"], index=False)
        post_bin = [(16, sizes.mid_len - 16)]
        kv.qa_frame(kv.eval_items(tokenizer, streams["train"], vocab, post_bin, sizes.post_items, POST_SEED)).to_parquet(
            files["post_train"], index=False)
        kv.qa_frame(kv.eval_items(tokenizer, streams["val"], vocab, post_bin, 8, POST_SEED)).to_parquet(
            files["post_val"], index=False)
        kv.qa_frame(ttt_items).to_parquet(files["ttt"], index=False)
    return {**splits, **files}, eval_items, ttt_items


def run_all(work: Path, jobs, results: dict, n_jobs: int) -> None:
    """Trainer runs, `n_jobs` at a time (each its own Ray instance; mostly start-up)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(job):
        phase, arm, seed, overrides = job
        out = work / "runs" / phase / f"{arm}_s{seed}"
        return f"{phase}/{arm}_s{seed}", runs.run_trainer(out, overrides(out))

    with ThreadPoolExecutor(max_workers=n_jobs) as pool:
        for name, record in pool.map(one, jobs):
            results["runs"][name] = record


KEPT_METRICS = ("actor/optimizer_steps_ttt", "actor/optimizer_steps", "actor/sft_loss_ttt", "actor/sft_loss",
                "reward/cs_reward_mean", "reward/cs_reward_chance_mean", "reward/cs_reward_above_chance_mean",
                "val_loss")


def run_summary(work: Path, name: str, record: dict, data_tokens: dict) -> dict:
    """Updates, tokens, wall time and the few per-step curves the report reads, from the run's own metrics."""
    metrics = runs.read_metrics(work / "runs" / name)
    train_file = Path(next(o.split("=", 1)[1] for o in record["command"] if o.startswith("data.train_files=")))
    batch = int(next(o.split("=", 1)[1] for o in record["command"] if o.startswith("data.train_batch_size=")))
    steps = [m for m in metrics if "actor/optimizer_steps_ttt" in m or "actor/optimizer_steps" in m]
    option = lambda key, default=None: next((o.split("=", 1)[1] for o in reversed(record["command"])
                                             if o.startswith(key + "=")), default)
    ppo = option("refine.ttt_ppo_update") == "true"
    # rollout tokens per global step: documents x C x n x k (the run's own overrides), for the steps it logged
    rollouts = len(steps) * batch * int(option("refine.n_chunks")) * int(option("refine.n_per_prefix")) * int(
        option("refine.response_length")) if ppo else 0
    curves = {key: [round(m[key], 5) for m in metrics if key in m] for key in KEPT_METRICS}
    return {
        "wall_s": record["wall_s"], "train_s": record["train_s"], "global_steps": len(steps),
        "inner_updates": int(sum(m.get("actor/optimizer_steps_ttt", 0) for m in metrics)),
        "task_updates": int(sum(m.get("actor/optimizer_steps", 0) for m in metrics)),
        "ntp_tokens": len(steps) * batch * data_tokens[train_file.name], "rollout_tokens": rollouts,
        "curves": {k: v for k, v in curves.items() if v},
    }


def study(work: Path, sizes, n_jobs: int) -> dict:
    from transformers import AutoTokenizer

    stage_s, t0 = {}, time.time()
    splits = pretrain.build_splits(work, sizes.mid_len)
    tokenizer = AutoTokenizer.from_pretrained(pretrain.TOKENIZER_DIR)
    data, eval_items, ttt_items = build_data(work, sizes, splits, tokenizer)
    models = {"random_init": pretrain.random_init_model(work, sizes),
              "pretrained": pretrain.pretrained_model(work, sizes, data["train"])}
    pre = models["pretrained"]
    stage_s["data_and_pretrain"] = round(time.time() - t0, 1)
    results = {"runs": {}, "models": {}}
    mid = lambda arms, seeds: [("mid", arm, seed, lambda out, arm=arm, seed=seed: runs.mid_overrides(
        sizes, pre, out, seed, arm, data)) for seed in seeds for arm in arms]
    # the primary comparison first, then post-training, then the controls and ablations
    jobs = mid(("ntp", "refine"), sizes.seeds)
    jobs += [("post", arm, seed, lambda out, arm=arm, seed=seed: runs.post_overrides(sizes, pre, out, seed, arm, data))
             for seed in sizes.seeds for arm in runs.POST_ARMS]
    jobs += mid(sizes.controls + sizes.ablations, sizes.control_seeds)
    t1 = time.time()
    run_all(work, jobs, results, n_jobs)
    for name in list(results["runs"]):
        models[name] = runs.export_hf(work / "runs" / name)
    ttt_jobs = [("ttt", arm, seed, lambda out, arm=arm, seed=seed: runs.ttt_overrides(
        sizes, models[f"post/refine_s{seed}"], out, seed, arm, data)) for seed in sizes.seeds for arm in runs.TTT_ARMS]
    run_all(work, ttt_jobs, results, n_jobs)
    for name in [n for n in results["runs"] if n.startswith("ttt/")]:
        models[name] = runs.export_hf(work / "runs" / name)
    stage_s["trainer_runs"] = round(time.time() - t1, 1)
    t2 = time.time()
    for name, model_dir in models.items():
        path = work / "eval" / f"{name.replace('/', '__')}.json"
        if not path.exists():
            print(f"repro: evaluating {name} ...", flush=True)
            start = time.time()
            secondary = name in ("random_init", "pretrained") or name.startswith("mid/")
            if name.startswith("ttt/"):
                value = {"measures": {}, "em": {}}
            else:
                value = measures.evaluate_model(model_dir, eval_items, data["test"] if secondary else None, sizes, pre)
            if name.startswith("ttt/") or name.startswith("post/refine") or name in ("random_init", "pretrained"):
                import torch

                with torch.no_grad():
                    value["em_ttt"] = measures.kv_exact_match(measures.load(model_dir)[0], ttt_items)
            value["eval_s"] = round(time.time() - start, 1)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(value))
        results["models"][name] = json.loads(path.read_text())
    stage_s["evaluation"] = round(time.time() - t2, 1)
    doc_tokens = {p.name: _mean_tokens(tokenizer, p) for p in (data["mid_train"], data["post_train"], data["ttt"])}
    for name in results["runs"]:
        results["runs"][name] = run_summary(work, name, results["runs"][name], doc_tokens)
    record = work / "models" / "pretrain.json"
    results["pretrain"] = json.loads(record.read_text()) if record.exists() else {}
    results["data"] = {"eval_items": len(eval_items), "ttt_items": len(ttt_items),
                       "mean_eval_distance": {b: round(sum(i["distance"] for i in eval_items if i["bin"] == b) /
                                                  max(1, sum(i["bin"] == b for i in eval_items)), 1)
                                              for b in {i["bin"] for i in eval_items}},
                       "doc_tokens": doc_tokens}
    results["stage_s"] = stage_s
    return results


def _mean_tokens(tokenizer, path: Path) -> int:
    import pandas as pd

    frame = pd.read_parquet(path)
    column = "text" if "text" in frame else "prompt"
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in frame[column]]
    return round(sum(lengths) / len(lengths))


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "scripts/repro", "refine"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + ("+uncommitted" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> None:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="toy sizes: checks the pipeline, claims nothing")
    parser.add_argument("--work-dir", type=Path, help="default runs/repro/full or runs/repro/quick")
    parser.add_argument("--report-dir", type=Path,
                        help="where results.json, results.md and results/*.png go (default: docs/, quick: work dir)")
    parser.add_argument("--jobs", type=int, default=2, help="trainer runs at a time (default 2)")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite results.md and the plots from the report dir's results.json; run nothing")
    args = parser.parse_args(argv)
    if args.report_only:
        if args.quick or args.work_dir:
            raise SystemExit("run.py: --report-only reads the results file only; drop --quick / --work-dir")
        report_dir = args.report_dir or REPO / "docs"
        for path in report.write(report.load_results(report_dir / "results.json"), report_dir):
            print(f"repro: wrote {path}")
        return
    sizes = QUICK if args.quick else FULL
    work = (args.work_dir or REPO / "runs" / "repro" / ("quick" if args.quick else "full")).resolve()
    report_dir = args.report_dir or (work if args.quick else REPO / "docs")
    work.mkdir(parents=True, exist_ok=True)
    started, commit = time.time(), _commit()
    results = {"study_version": STUDY_VERSION, "commit": commit,
               "command": "python scripts/repro/run.py" + (" --quick" if args.quick else ""), "quick": args.quick,
               "sizes": asdict(sizes)}
    results.update(study(work, sizes, args.jobs))
    results["wall_s"] = round(time.time() - started, 1)
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "results.json").write_text(json.dumps(results, indent=None, separators=(",", ":")) + "\n")
    paths = report.write(results, report_dir)
    print(f"repro: done in {results['wall_s']:.0f}s (this invocation; cached stages are not re-run)")
    for path in [report_dir / "results.json", *paths]:
        print(f"repro: wrote {path}")


if __name__ == "__main__":
    main()
