"""The study's report (docs/results.md) and plots, computed from the results file alone (`run.py --report-only`).

Every number in the report comes from `results.json` through the pre-registered analysis (scripts/repro/stats.py):
the same file always gives the same report, which tests/repro/test_results_doc.py checks against the committed one.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from statistics import fmean

from repro import stats
from repro.measures import lower_is_better
from repro.report_text import HISTORY, READING, RUN_NOTES
from repro.sizes import STUDY_VERSION

# (id, phase, statement, baseline model prefix, arm model prefix, item set); fixed before the run
HYPOTHESES = (
    ("H1", "mid", "ReFINE mid-training retrieves better than NTP mid-training beyond the pre-training length "
     "(primary)", "mid/ntp", "mid/refine", "primary"),
    ("C1", "mid", "positive control: NTP mid-training at 4L retrieves better than the pre-trained model",
     "pretrained", "mid/ntp", "primary"),
    ("C2", "post", "positive control: the pre-trained model trained on the task directly (inner NTP + task SFT, the "
     "post-training control) retrieves better than the pre-trained model", "pretrained", "post/ctl", "primary"),
    ("A1", "mid", "ablation, grouping: GRPO groups of 4 rollouts of one prefix (C=1, n=4) vs the official C=4, "
     "n=1 (equal rollouts)", "mid/refine", "mid/refine_n4", "primary"),
    ("A2", "mid", "ablation: RL alone (sft_coef 0) vs the official mix (sft_coef 1)", "mid/refine", "mid/refine_rl",
     "primary"),
    ("H2", "post", "ReFINE post-training (inner NTP + NSP-GRPO + task SFT) retrieves better than the update-matched "
     "control (inner NTP + task SFT)", "post/ctl", "post/refine", "primary"),
    ("H3", "ttt", "TTT with NTP + NSP-GRPO retrieves better than TTT with NTP alone (equal updates)", "ttt/ttt_ntp",
     "ttt/ttt_refine", "ttt"),
    ("C3", "ttt", "TTT with NTP alone vs no TTT (the ReFINE post-trained model)", "post/refine", "ttt/ttt_ntp", "ttt"),
)
ARM_LABELS = {"mid/ntp": "NTP", "mid/refine": "ReFINE", "mid/ntp_2x": "NTP, 2x updates (control)",
              "mid/refine_n4": "ReFINE, C=1 n=4", "mid/refine_rl": "ReFINE, sft_coef 0", "post/ctl": "inner NTP + task SFT",
              "post/refine": "ReFINE + task SFT", "ttt/ttt_ntp": "TTT, NTP", "ttt/ttt_refine": "TTT, NTP + NSP-GRPO",
              "pretrained": "pre-trained", "random_init": "random init"}


def _seeds(results) -> list[int]:
    return list(results["sizes"]["seeds"])


def _arm_seeds(results, prefix: str) -> list[int]:
    return [s for s in _seeds(results) if f"{prefix}_s{s}" in results["models"]]


def _bits(results, prefix: str, items: str, seeds=None) -> list[str]:
    """One '0'/'1' string per seed (one for a single model) over the item set: 'primary' bins, 'ttt', or a bin."""
    models = results["models"]
    names = [prefix] if prefix in models else [f"{prefix}_s{s}" for s in (seeds or _arm_seeds(results, prefix))]
    out = []
    for name in names:
        if items == "ttt":
            out.append("".join(models[name]["em_ttt"].values()))
        elif items == "primary":
            out.append("".join(models[name]["em"][b] for b in results["sizes"]["primary_bins"]))
        else:
            out.append(models[name]["em"][items])
    return out


def _ran(results, prefix: str) -> bool:
    return prefix in results["models"] or f"{prefix}_s{_seeds(results)[0]}" in results["models"]


def analyse(results) -> dict:
    n = results["sizes"]["bootstrap"]
    out = {"hypotheses": {}, "bins": {}}
    for hid, _, _, base, arm, items in HYPOTHESES:
        if not (_ran(results, base) and _ran(results, arm)):
            continue
        seeds = _arm_seeds(results, arm)  # the arm's seeds (a control or ablation may run on fewer)
        out["hypotheses"][hid] = stats.paired_difference(_bits(results, base, items, seeds), _bits(results, arm, items), n)
    bins = [f"{lo}-{hi}" for lo, hi in results["sizes"]["bins"]]
    mid_arms = [f"mid/{a}" for a in ("refine", *results["sizes"]["controls"], *results["sizes"]["ablations"])]
    for phase, base, arms in (("mid", "mid/ntp", mid_arms),
                              ("post", "post/ctl", ("post/refine",))):
        out["bins"][phase] = {arm: {b: stats.paired_difference(_bits(results, base, b, _arm_seeds(results, arm)),
                                                               _bits(results, arm, b), n) for b in bins} for arm in arms}
    return out


def _pp(r) -> str:
    return f"{r['diff']:+.1f} [{r['lo']:+.1f}, {r['hi']:+.1f}]"


def _table(columns, rows) -> list[str]:
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)] + ["| " + " | ".join(r) + " |" for r in rows]


def _arm_runs(results, prefix):
    return [v for k, v in results["runs"].items() if k.rsplit("_s", 1)[0] == prefix]


def _same(values) -> str:
    values = list(values)
    return str(values[0]) if len(set(values)) == 1 else " / ".join(map(str, values))


def compute_table(results) -> list[str]:
    rows = []
    for prefix in sorted({k.rsplit("_s", 1)[0] for k in results["runs"]}, key=lambda p: list(ARM_LABELS).index(p)):
        recs = _arm_runs(results, prefix)
        rows.append([f"{prefix} ({ARM_LABELS[prefix]})", _same(r["global_steps"] for r in recs),
                     _same(r["inner_updates"] for r in recs), _same(r["task_updates"] for r in recs),
                     _same(r["inner_updates"] + r["task_updates"] for r in recs), _same(r["ntp_tokens"] for r in recs),
                     _same(r["rollout_tokens"] for r in recs), f"{fmean(r['wall_s'] for r in recs):.0f}"])
    return _table(("arm", "global steps", "inner-loop updates", "task-SFT updates", "optimiser updates (total)",
                   "document tokens trained on", "NSP rollout tokens", "wall s per run (mean)"), rows)


def hypothesis_table(results, analysis) -> list[str]:
    rows = []
    for hid, phase, text, base, arm, items in HYPOTHESES:
        r = analysis["hypotheses"].get(hid)
        if r is None:
            rows.append([hid, text, "–", "–", "–", "–", "not run"])
            continue
        rows.append([hid, text, f"{r['baseline']:.1f}", f"{r['arm']:.1f}", _pp(r), f"{r['seeds']} x {r['items']}",
                     stats.verdict(r)])
    return _table(("id", "hypothesis (arm vs baseline)", "baseline EM %", "arm EM %", "Δ pp [95 % CI]",
                   "seeds x items", "verdict"), rows)


def bin_table(results, analysis, phase) -> list[str]:
    bins = [f"{lo}-{hi}" for lo, hi in results["sizes"]["bins"]]
    models = ["random_init", "pretrained"] + [p for p in ARM_LABELS if p.startswith(phase + "/")
                                               and any(k.startswith(p + "_s") for k in results["models"])]
    rows = []
    for prefix in models:
        row = [ARM_LABELS[prefix]]
        for b in bins:
            row.append(f"{100 * stats.bits(_bits(results, prefix, b)).mean():.1f}")
        rows.append(row)
    for arm, by_bin in analysis["bins"][phase].items():
        rows.append([f"Δ {ARM_LABELS[arm]} − {ARM_LABELS['mid/ntp' if phase == 'mid' else 'post/ctl']}"] +
                    [_pp(by_bin[b]) for b in bins])
    return _table(("model (greedy EM %, by definition-to-query distance in tokens)", *bins), rows)


def secondary_table(results) -> list[str]:
    models = results["models"]
    names = sorted({m for v in models.values() for m in v.get("measures", {})})
    arms = [p for p in ("mid/ntp", "mid/refine", "mid/ntp_2x", "mid/refine_n4", "mid/refine_rl")
            if any(k.startswith(p + "_s") for k in models)]
    rows = []
    for m in names:
        row = [m + (" (lower better)" if lower_is_better(m) else ""), f"{models['pretrained']['measures'][m]:.4f}"]
        for arm in arms:
            vals = [models[f"{arm}_s{s}"]["measures"][m] for s in _arm_seeds(results, arm)]
            row.append(f"{fmean(vals):.4f}")
        d = [models[f"mid/refine_s{s}"]["measures"][m] - models[f"mid/ntp_s{s}"]["measures"][m] for s in _seeds(results)]
        mean, lo, hi = stats.seed_interval(d)
        row.append(f"{mean:+.4f} [{lo:+.4f}, {hi:+.4f}]" if len(d) > 1 else f"{mean:+.4f}")
        rows.append(row)
    # the trainer's own validation loss (validation split, last evaluation of each run): read, not re-measured
    last_val = lambda arm, seed: (results["runs"].get(f"{arm}_s{seed}", {}).get("curves", {}).get("val_loss") or [None])[-1]
    if all(last_val(a, s) is not None for a in arms for s in _arm_seeds(results, a)):
        row = ["trainer val_loss, validation split, end of run (lower better)", "–"]
        row += [f"{fmean(last_val(a, s) for s in _arm_seeds(results, a)):.4f}" for a in arms]
        d = [last_val("mid/refine", s) - last_val("mid/ntp", s) for s in _seeds(results)]
        mean, lo, hi = stats.seed_interval(d)
        rows.append(row + [f"{mean:+.4f} [{lo:+.4f}, {hi:+.4f}]" if len(d) > 1 else f"{mean:+.4f}"])
    labels = [f"{ARM_LABELS[a]} (n={len(_arm_seeds(results, a))})" for a in arms]
    return _table(("measure", "pre-trained", *labels, "Δ ReFINE − NTP [95 % CI, seeds]"), rows)


def collapse_table(results) -> list[str]:
    rows = []
    for prefix in ("mid/refine", "mid/refine_n4", "mid/refine_rl", "post/refine", "ttt/ttt_refine"):
        recs = _arm_runs(results, prefix)
        if not recs or not recs[0]["curves"].get("reward/cs_reward_mean"):
            continue

        def quarter(key, last):
            vals = []
            for r in recs:
                curve = r["curves"].get(key, [])
                q = max(1, len(curve) // 4)
                vals += curve[-q:] if last else curve[:q]
            return f"{fmean(vals):.3f}" if vals else "–"
        hidden = [results["models"][k]["measures"].get("hidden_cos") for k in results["models"]
                  if k.rsplit("_s", 1)[0] == prefix]
        hidden = [h for h in hidden if h is not None]
        rows.append([ARM_LABELS[prefix], quarter("reward/cs_reward_mean", False), quarter("reward/cs_reward_mean", True),
                     quarter("reward/cs_reward_chance_mean", False), quarter("reward/cs_reward_chance_mean", True),
                     quarter("reward/cs_reward_above_chance_mean", False),
                     quarter("reward/cs_reward_above_chance_mean", True),
                     f"{fmean(hidden):.3f}" if hidden else "–"])
    pre = results["models"]["pretrained"]["measures"].get("hidden_cos")
    return _table(("arm", "cosine reward, first quarter", "last quarter", "its chance level, first", "last",
                   "reward − chance, first", "last", f"own hidden-state cosine (pre-trained {pre:.3f})"), rows)


def plots(results, analysis, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    bins = [f"{lo}-{hi}" for lo, hi in results["sizes"]["bins"]]
    panels = {
        "mid": [(f"{ARM_LABELS[a]} − NTP, d {b}", analysis["bins"]["mid"][a][b])
                for a in analysis["bins"]["mid"] for b in bins] + [("C1 NTP − pre-trained (primary)", analysis["hypotheses"]["C1"])],
        "post": [(f"ReFINE − control, d {b}", analysis["bins"]["post"]["post/refine"][b]) for b in bins]
        + [("C2 task-trained − pre-trained (primary)", analysis["hypotheses"]["C2"])] * ("C2" in analysis["hypotheses"]),
        "ttt": [(f"{hid}", analysis["hypotheses"][hid]) for hid in ("H3", "C3") if hid in analysis["hypotheses"]],
    }
    titles = {"mid": "Mid-training at 4L: paired Δ greedy EM (pp), 95 % CI",
              "post": "Post-training: ReFINE − update-matched control, Δ EM (pp)",
              "ttt": "Test-time training at equal updates: Δ EM (pp)"}
    paths = []
    for phase, rows in panels.items():
        fig, ax = plt.subplots(figsize=(7, 0.42 * len(rows) + 1.2))
        for y, (label, r) in enumerate(rows):
            ax.errorbar(r["diff"], y, xerr=[[r["diff"] - r["lo"]], [r["hi"] - r["diff"]]], fmt="o", capsize=3,
                        color="tab:orange" if label.startswith(("ReFINE", "H")) else "tab:blue")
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(titles[phase], fontsize=9)
        ax.set_xlabel("Δ exact match, percentage points (arm − baseline)")
        fig.tight_layout()
        paths.append(out_dir / f"{phase}_paired.png")
        fig.savefig(paths[-1], dpi=100, metadata={"Software": None})
        plt.close(fig)
    return paths


def _reading(results, analysis) -> list[str]:
    lines = []
    for hid, _, text, _, _, _ in HYPOTHESES:
        r = analysis["hypotheses"].get(hid)
        if r is None:
            lines.append(f"- **{hid}** ({text}): not run in this invocation.")
            continue
        v = stats.verdict(r)
        if v == "held":
            what = f"held: Δ {_pp(r)} pp, the interval excludes 0."
        elif v == "reversed":
            what = f"reversed: Δ {_pp(r)} pp, the arm is worse; the interval excludes 0."
        else:
            what = (f"null: Δ {_pp(r)} pp. The interval rules out a gain larger than {r['hi']:+.1f} pp and a loss "
                    f"larger than {r['lo']:+.1f} pp at this scale; it cannot rule out a smaller effect, or an effect "
                    f"that needs more steps, longer contexts or a larger model.")
        lines.append(f"- **{hid}** ({text}): {what}")
    return lines


def render(results) -> tuple[str, dict]:
    s, pre, analysis = results["sizes"], results.get("pretrain", {}), analyse(results)
    quick = " (--quick: toy sizes, no claim)" if results.get("quick") else ""
    text = [
        f"# Does ReFINE work at small scale? Take two (issue 23){quick}",
        "",
        "Generated by `python scripts/repro/run.py --report-only` from `docs/results.json`; do not edit by hand.",
        "",
        f"- **Command:** `{results['command']}`; study version `{results['study_version']}`; code at commit "
        f"`{results['commit']}`; **wall time {results['wall_s']:.0f} s** ({results['wall_s'] / 60:.1f} min; stages: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in results["stage_s"].items()) + ").",
        f"- **Model:** fla DeltaNet, {s['num_layers']} layers x {s['hidden_size']}, "
        f"{pre.get('parameters', 0) / 1e6:.2f}M parameters, vocab 512. Copy warm-up {pre.get('copy_steps')} steps, then "
        f"NTP pre-training at **L = {s['pretrain_len']}** tokens: {pre.get('steps')} steps x {pre.get('batch')} "
        f"windows, {s['pretrain_pairs']} planted pairs per window ({pre.get('wall_s')} s).",
        f"- **Retrieval task:** `$ K K V V` pairs (key: 2 letters of {21}, value: 2 digits, chance 1 %), written once "
        f"and queried later. Mid-training documents: {s['mid_len']} tokens (**4L**), {s['mid_pairs']} queried pairs "
        f"each plus distractors. Held-out items: test-split documents, {s['items_per_bin']} per distance bin "
        f"({', '.join(f'{lo}-{hi}' for lo, hi in s['bins'])} tokens; primary: {', '.join(s['primary_bins'])}), "
        f"{results['data']['eval_items']} in all; TTT items: {results['data']['ttt_items']} more, distances "
        f"{s['ttt_bin'][0]}-{s['ttt_bin'][1]}.",
        f"- **Primary measure (fixed in code before the run):** greedy exact match of the value (both digits argmax), "
        f"paired by item and seed (seeds {', '.join(map(str, s['seeds']))}), mean difference with a two-level "
        f"(seeds x items) bootstrap 95 % interval, {s['bootstrap']} resamples. Verdict: held = interval above 0.",
        f"- **Trainer runs:** `python -m refine.main`, fast NSP, lr {s['lr']} in every run, C={s['n_chunks']}, "
        f"n={s['n_per_prefix']}, k={s['response_length']}, {s['sampling']} sampling, reward {s['reward']} "
        f"(post: {s['post_reward']}, TTT: {s['ttt_reward']}), sft_coef {s['sft_coef']}, ppo_coef {s['ppo_coef']} "
        f"(TTT {s['ttt_ppo_coef']}); `refine.mini_batch_size` = the batch, so every arm takes one inner-loop "
        f"optimiser step per global step. Primary arms on seeds {', '.join(map(str, s['seeds']))}; the controls "
        f"and ablations on seed(s) {', '.join(map(str, s['control_seeds']))} (paired with the same seed of their "
        "baseline). Nothing was tuned on the test split.",
        "",
        *([RUN_NOTES, ""] if not results.get("quick") else []),
        "## Pre-registered hypotheses and results",
        "",
        *hypothesis_table(results, analysis),
        "",
        *_reading(results, analysis),
        "",
        *([READING, ""] if not results.get("quick") else []),
        "## Updates and tokens per arm (read from each run's metrics)",
        "",
        *compute_table(results),
        "",
        "## Mid-training: exact match by distance",
        "",
        *bin_table(results, analysis, "mid"),
        "",
        "## Mid-training: secondary measures (test split, mean over seeds)",
        "",
        *secondary_table(results),
        "",
        "## Collapse diagnostic (ReFINE arms: training-time cosine reward vs its chance level; own hidden states)",
        "",
        *collapse_table(results),
        "",
        "## Post-training: exact match by distance",
        "",
        *bin_table(results, analysis, "post"),
        "",
        "## Plots",
        "",
        *[f"![{name}](results/{name}_paired.png)" for name in ("mid", "post", "ttt")],
        "",
        "## History",
        "",
        HISTORY,
        "",
    ]
    return "\n".join(text), analysis


def load_results(path: Path) -> dict:
    """The results file, or one line naming what is wrong with it (missing, not JSON, another study version)."""
    if not path.exists():
        raise SystemExit(f"run.py: --report-only: no results file {path}; run the study first")
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise SystemExit(f"run.py: {path} is not a results file ({error})") from None
    if results.get("study_version") != STUDY_VERSION:
        raise SystemExit(f"run.py: {path} is from study version {results.get('study_version')!r}, this code is "
                         f"{STUDY_VERSION!r}; rerun the study")
    return results


def write(results, report_dir: Path) -> list[Path]:
    report_dir = Path(report_dir)
    text, analysis = render(results)
    png = plots(results, analysis, report_dir / "results")
    path = report_dir / "results.md"
    path.write_text(text)
    return [path, *png]


NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def compare(committed: str, regenerated: str) -> list[str]:
    """Lines whose numbers differ between the committed report and the one regenerated from the results file."""
    a, b = committed.splitlines(), regenerated.splitlines()
    if len(a) != len(b):
        return [f"line count {len(a)} != {len(b)}"]
    return [f"line {i + 1}: {x!r} != {y!r}" for i, (x, y) in enumerate(zip(a, b))
            if NUMBER.findall(x) != NUMBER.findall(y) or x != y]
