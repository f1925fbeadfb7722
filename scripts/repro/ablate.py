"""Ablations of the ReFINE mid-training arm, judged on the *validation* split only (never the test split):

    .venv/bin/python scripts/repro/ablate.py [--work-dir runs/repro/full] [--seed 1]

Needs the full study's pre-trained model and data (run scripts/repro/run.py first). Each ablation is the ReFINE
mid-training run of the study with one setting changed; it is compared with the study's own NTP and ReFINE runs of
the same seed by the trainer's last validation on the validation split (`val_loss`: NTP loss; `val_em_score`:
greedy next-token accuracy), both logged by the trainer every `mid_steps // 4` steps. Runs are cached like the
study's (work/runs/ablation/...).

It also runs one *control* arm of post-training for every study seed: the inner loop with NTP only (no NSP-GRPO)
plus task SFT. ReFINE post-training adds both an inner NTP term on the QA prompts and the NSP-GRPO term to task
SFT; this arm tells which of the two moves the held-out answer NLL (qa_nll, the study's test QA prompts; a control
arm reported next to the study's arms, nothing is selected with it).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from repro import runs
from repro.sizes import FULL

REPO = Path(__file__).resolve().parents[2]
# tag -> the one override that differs from the study's ReFINE arm
ABLATIONS = {"reward_binary": ("refine.reward", "binary"), "reward_hybrid": ("refine.reward", "hybrid"),
             "ppo_coef_0.05": ("refine.ppo_coef", "0.05"), "ppo_coef_1": ("refine.ppo_coef", "1.0"),
             "C_8": ("refine.n_chunks", "8"), "k_10": ("refine.response_length", "10"),
             "sampling_uniform": ("refine.sampling", "uniform")}


def last(metrics: list[dict], key: str):
    values = [m[key] for m in metrics if key in m]
    return values[-1] if values else float("nan")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=REPO / "runs" / "repro" / "full")
    parser.add_argument("--seed", type=int, default=FULL.seeds[0])
    parser.add_argument("--jobs", type=int, default=2, help="trainer runs at a time (default 2)")
    args = parser.parse_args(argv)
    work = args.work_dir.resolve()
    data = {split: work / "data" / f"{split}.parquet" for split in ("train", "val", "test")}
    pretrained = work / "models" / "pretrained"
    if not (pretrained / "config.json").exists():
        raise SystemExit(f"ablate.py: no pre-trained model in {pretrained}; run scripts/repro/run.py first")
    rows = []
    for arm in runs.MID_ARMS:
        rows.append((f"study {arm}", work / "runs" / "mid" / f"{arm}_s{args.seed}"))
    def one(item):
        tag, (key, value) = item
        out = work / "runs" / "ablation" / f"refine_{tag}_s{args.seed}"
        overrides = [f"{key}={value}" if o.split("=")[0] == key else o
                     for o in runs.mid_overrides(FULL, pretrained, out, args.seed, "refine", data)]
        runs.run_trainer(out, overrides)
        return f"refine, {key}={value}", out

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        rows += list(pool.map(one, ABLATIONS.items()))
    print(f"| run (seed {args.seed}) | val_loss (validation split, last) | val_em_score | wall s |")
    print("|---|---|---|---|")
    for label, out in rows:
        metrics = runs.read_metrics(out)
        record = (out / "run.json").read_text() if (out / "run.json").exists() else "{}"
        import json

        print(f"| {label} | {last(metrics, 'val_loss'):.4f} | {last(metrics, 'val_em_score'):.4f} | "
              f"{json.loads(record).get('wall_s', 'n/a')} |")
    post_control(work, data)


def post_control(work: Path, data: dict) -> None:
    """Post-training with inner NTP only + task SFT, every study seed; qa_tok / qa_nll next to the study's arms."""
    import json
    import statistics

    from repro.measures import evaluate_model

    pretrained = work / "models" / "pretrained"
    values: dict[str, list[dict]] = {"sft": [], "inner_ntp": [], "refine": []}
    for seed in FULL.seeds:
        out = work / "runs" / "ablation" / f"post_inner_ntp_s{seed}"
        overrides = [o for o in runs.post_overrides(FULL, pretrained, out, seed, "sft")
                     if not o.startswith("refine.ttt_sft_update=")] + ["refine.ttt_sft_update=true"]
        runs.run_trainer(out, overrides)
        cache = out / "qa.json"
        if not cache.exists():
            result = evaluate_model(runs.export_hf(out), data["test"], runs.QA_TEST, FULL, work / "niah", pretrained,
                                    parts=("qa",))
            cache.write_text(json.dumps(result))
        values["inner_ntp"].append(json.loads(cache.read_text()))
        for arm in ("sft", "refine"):
            values[arm].append(json.loads((work / "eval" / f"post__{arm}_s{seed}.json").read_text()))
    for measure in ("qa_tok", "qa_nll"):
        print(f"\n| post-training arm | {measure} per seed {FULL.seeds} | mean ± std |")
        print("|---|---|---|")
        for arm, label in (("sft", "task SFT"), ("inner_ntp", "inner NTP + task SFT (control)"),
                           ("refine", "ReFINE: inner NTP + NSP-GRPO + task SFT")):
            v = [record[measure] for record in values[arm]]
            print(f"| {label} | {', '.join(f'{x:.4f}' for x in v)} | {statistics.fmean(v):.4f} ± "
                  f"{statistics.stdev(v):.2g} |")


if __name__ == "__main__":
    main()
