"""The small-scale reproduction study (issue 13), one command:

    .venv/bin/python scripts/repro/run.py            # full study (~1 h on 2 CPU cores), work dir runs/repro/full
    .venv/bin/python scripts/repro/run.py --quick    # the same pipeline at toy sizes (CI), runs/repro/quick

Stages, each cached under the work dir and skipped when done (an interrupted study resumes):
1. data splits (train / val / test by document) and the NTP pre-trained DeltaNet (scripts/repro/pretrain.py);
2. mid-training from that checkpoint, NTP-only vs ReFINE (NTP + NSP-GRPO, fast NSP), per seed;
3. post-training on the synthetic QA set, task SFT vs ReFINE (inner NTP + NSP-GRPO + task SFT), per seed;
4. test-time training on the held-out QA prompts (prompts only), from each seed's SFT post-trained model;
5. every measure of scripts/repro/measures.py on every model, then the report (markdown + PNG plots).
Sizes and hyper-parameters: scripts/repro/sizes.py. The report path and plot paths are printed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

# one intra-op thread: on 2 shared cores a contended thread pool is many times slower (tests/conftest.py does
# the same); set before torch is imported, inherited by the trainer runs and their Ray workers
os.environ.setdefault("OMP_NUM_THREADS", "1")
# `scripts` is not a package here (a site-packages module of that name shadows it): import `repro` from scripts/
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from repro import measures, pretrain, report, runs
from repro.sizes import FULL, QUICK

REPO = Path(__file__).resolve().parents[2]


def cached_eval(work: Path, name: str, model_dir: Path, data: dict, sizes, parts, judge: Path) -> dict:
    path = work / "eval" / f"{name.replace('/', '__')}.json"
    if path.exists():
        return json.loads(path.read_text())
    print(f"repro: evaluating {name} ({'+'.join(parts)}) ...", flush=True)
    start = time.time()
    values = measures.evaluate_model(model_dir, data["test"], runs.QA_TEST, sizes, work / "niah", judge, parts=parts)
    values["eval_s"] = round(time.time() - start, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(values, indent=1))
    return values


def run_all(work: Path, jobs, results: dict, n_jobs: int) -> None:
    """Trainer runs, `n_jobs` at a time (each is mostly Ray / worker start-up; each its own Ray instance)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(job):
        phase, arm, seed, overrides = job
        out = work / "runs" / phase / f"{arm}_s{seed}"
        return f"{phase}/{arm}_s{seed}", runs.run_trainer(out, overrides(out))

    with ThreadPoolExecutor(max_workers=n_jobs) as pool:
        for name, record in pool.map(one, jobs):
            results["runs"][name] = record


def study(work: Path, sizes, n_jobs: int = 2) -> dict:
    start = time.time()
    data = pretrain.build_splits(work, sizes.train_len)
    models = {"random_init": pretrain.random_init_model(work, sizes),
              "pretrained": pretrain.pretrained_model(work, sizes, data["train"])}
    results = {"sizes": asdict(sizes), "models": {}, "runs": {}}
    pre = models["pretrained"]
    # (phase, arm, seed, overrides); the TTT runs start from the SFT post-trained model of the same seed
    jobs = [("mid", arm, seed, lambda out, arm=arm, seed=seed: runs.mid_overrides(sizes, pre, out, seed, arm, data))
            for seed in sizes.seeds for arm in runs.MID_ARMS]
    jobs += [("post", arm, seed, lambda out, arm=arm, seed=seed: runs.post_overrides(sizes, pre, out, seed, arm))
             for seed in sizes.seeds for arm in runs.POST_ARMS]
    run_all(work, jobs, results, n_jobs)
    for name in list(results["runs"]):
        models[name] = runs.export_hf(work / "runs" / name)
    ttt_jobs = [("ttt", "ttt", seed, lambda out, seed=seed: runs.ttt_overrides(sizes, models[f"post/sft_s{seed}"], out, seed))
                for seed in sizes.seeds]
    run_all(work, ttt_jobs, results, n_jobs)
    for name in [n for n in results["runs"] if n.startswith("ttt/")]:
        models[name] = runs.export_hf(work / "runs" / name)
    for name, model_dir in models.items():
        parts = ("lm",) if name.startswith("mid/") else ("qa",) if name.startswith(("post/", "ttt/")) else ("lm", "qa")
        results["models"][name] = cached_eval(work, name, model_dir, data, sizes, parts, pre)
    for name in results["runs"]:
        results["runs"][name]["metrics"] = runs.read_metrics(work / "runs" / name)
    pretrain_record = work / "models" / "pretrain.json"
    results["pretrain"] = json.loads(pretrain_record.read_text()) if pretrain_record.exists() else {}
    results["data_rows"] = {split: _rows(path) for split, path in data.items()}
    results["stage_wall_s"] = round(time.time() - start, 1)
    return results


def _rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="toy sizes: checks the pipeline, claims nothing")
    parser.add_argument("--work-dir", type=Path, help="default runs/repro/full or runs/repro/quick")
    parser.add_argument("--report-dir", type=Path, help="where results.md and results/*.png go (default: work dir)")
    parser.add_argument("--seeds", type=int, nargs="+", help="override the seeds (default 1 2 3; quick: 1)")
    parser.add_argument("--jobs", type=int, default=2, help="trainer runs at a time (default 2)")
    parser.add_argument("--report-only", action="store_true",
                        help="write results.md and the plots again from the work dir's results.json; run nothing")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.seeds:
        sizes = replace(sizes, seeds=tuple(args.seeds))
    work = (args.work_dir or REPO / "runs" / "repro" / ("quick" if args.quick else "full")).resolve()
    if args.report_only:
        saved = work / "results.json"
        if not saved.exists():
            raise SystemExit(f"repro: --report-only: no {saved}; run the study first")
        for path in report.write(json.loads(saved.read_text()), args.report_dir or work):
            print(f"repro: wrote {path}")
        return
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    results = study(work, sizes, args.jobs)
    results["command"] = "python scripts/repro/run.py" + (" --quick" if args.quick else "") + (
        f" --seeds {' '.join(map(str, args.seeds))}" if args.seeds else "")
    results["quick"] = args.quick
    results["wall_s"] = round(time.time() - started, 1)
    (work / "results.json").write_text(json.dumps(results, indent=1, default=str))
    paths = report.write(results, args.report_dir or work)
    print(f"repro: done in {results['wall_s']:.0f}s (this invocation; cached stages are not re-run)")
    for path in paths:
        print(f"repro: wrote {path}")


if __name__ == "__main__":
    main()
