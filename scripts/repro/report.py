"""The study's report: markdown tables (mean ± std over seeds, with n) and PNG plots, from `results.json` data.

Table cells read `mean ± std (n=N)`; std is the sample standard deviation over seeds (0 for n=1). "Δ" is the mean
of the per-seed paired differences (same seed = same documents in the same order), "wins" how many seeds went the
better way (lower for losses / NLL, higher otherwise).
"""

from __future__ import annotations

import statistics
from pathlib import Path

from repro.measures import lower_is_better

MID_COLUMNS = ("measure", "random init", "pretrained", "NTP mid-train", "ReFINE mid-train", "Δ (ReFINE − NTP)",
               "ReFINE better (seeds)")
POST_COLUMNS = ("measure", "random init", "pretrained", "task SFT", "ReFINE post-train", "Δ (ReFINE − SFT)",
                "ReFINE better (seeds)")
TTT_COLUMNS = ("measure", "no TTT", "TTT", "Δ (TTT − none)", "TTT better (seeds)")


def cell(values: list[float]) -> str:
    if not values:
        return "–"
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.4g} ± {std:.2g} (n={len(values)})"


def _paired(a: list[float], b: list[float], measure: str) -> tuple[str, str]:
    diffs = [y - x for x, y in zip(a, b)]
    if not diffs:
        return "–", "–"
    wins = sum((d < 0) if lower_is_better(measure) else (d > 0) for d in diffs)
    return cell(diffs), f"{wins}/{len(diffs)}"


def _table(columns, rows) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _measure_order(names):
    def key(name):
        stem, _, length = name.partition("@")
        return (stem, int(length) if length else 0)
    return sorted(names, key=key)


def _arm_values(models, prefix, arm, seeds, measure):
    return [models[f"{prefix}/{arm}_s{s}"][measure] for s in seeds if measure in models.get(f"{prefix}/{arm}_s{s}", {})]


QA_MEASURES = ("qa_tok", "qa_nll")


def tables(results) -> dict[str, list[str]]:
    models, seeds = results["models"], results["sizes"]["seeds"]
    base = lambda name, m: cell([models[name][m]] if m in models.get(name, {}) else [])
    lm = _measure_order({m for name, v in models.items() if name.startswith("mid/") for m in v if "@" in m})
    mid_rows, post_rows, ttt_rows = [], [], []
    for m in lm:
        ntp, ref = _arm_values(models, "mid", "ntp", seeds, m), _arm_values(models, "mid", "refine", seeds, m)
        mid_rows.append([m, base("random_init", m), base("pretrained", m), cell(ntp), cell(ref), *_paired(ntp, ref, m)])
    for m in QA_MEASURES:
        sft, ref = _arm_values(models, "post", "sft", seeds, m), _arm_values(models, "post", "refine", seeds, m)
        post_rows.append([m, base("random_init", m), base("pretrained", m), cell(sft), cell(ref), *_paired(sft, ref, m)])
        ttt = _arm_values(models, "ttt", "ttt", seeds, m)
        ttt_rows.append([m, cell(sft), cell(ttt), *_paired(sft, ttt, m)])
    sanity_rows = []
    for m in lm + list(QA_MEASURES):
        r, p = models["random_init"].get(m), models["pretrained"].get(m)
        if r is None or p is None:
            continue
        beats = (p < r) if lower_is_better(m) else (p > r)
        sanity_rows.append([m, f"{r:.4g}", f"{p:.4g}", "yes" if beats else "**no**"])
    return {"mid": _table(MID_COLUMNS, mid_rows), "post": _table(POST_COLUMNS, post_rows),
            "ttt": _table(TTT_COLUMNS, ttt_rows),
            "sanity": _table(("measure", "random init", "pretrained", "pretrained better"), sanity_rows)}


def compute_rows(results) -> list[str]:
    s, seeds = results["sizes"], results["sizes"]["seeds"]
    rows = []
    for phase, arms, steps, batch, length in (
        ("mid", ("ntp", "refine"), s["mid_steps"], s["mid_batch"], s["train_len"]),
        ("post", ("sft", "refine"), s["post_steps"], s["post_batch"], 480),
        ("ttt", ("ttt",), s["ttt_steps"], s["qa_val_batch"], 480),
    ):
        for arm in arms:
            recs = [results["runs"][f"{phase}/{arm}_s{x}"] for x in seeds if f"{phase}/{arm}_s{x}" in results["runs"]]
            rollout = steps * batch * s["n_chunks"] * s["response_length"] if arm in ("refine", "ttt") else 0
            rows.append([f"{phase}/{arm}", str(steps), f"{batch} x <= {length}", f"<= {steps * batch * length}",
                         str(rollout), cell([r["wall_s"] for r in recs]), cell([r["train_s"] for r in recs])])
    return _table(("run", "steps", "batch (rows x tokens)", "tokens seen (NTP)", "NSP rollout tokens",
                   "wall s per run (incl. Ray start)", "trainer step time s"), rows)


def plots(results, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models, seeds = results["models"], results["sizes"]["seeds"]
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    stems = ["ntp_loss", "nsp_em", "nsp_cos", "recall", "niah_nll"]
    fig, axes = plt.subplots(1, len(stems), figsize=(4 * len(stems), 3.6))
    for ax, stem in zip(axes, stems):
        names = _measure_order({m for v in models.values() for m in v if m.startswith(stem + "@")})
        lengths = [int(n.split("@")[1]) for n in names]
        for label, arm, style in (("NTP", "ntp", "o-"), ("ReFINE", "refine", "s-")):
            vals = [_arm_values(models, "mid", arm, seeds, n) for n in names]
            means = [statistics.fmean(v) if v else float("nan") for v in vals]
            stds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in vals]
            ax.errorbar(lengths, means, yerr=stds, fmt=style, capsize=3, label=f"{label} mid-train")
        for name, style in (("pretrained", "k--"), ("random_init", "k:")):
            ax.plot(lengths, [models[name].get(n, float("nan")) for n in names], style, label=name.replace("_", " "))
        ax.axvline(results["sizes"]["train_len"], color="grey", lw=0.5)
        ax.set_xscale("log", base=2)
        ax.set_title(stem + (" (lower better)" if lower_is_better(stem) else ""))
        ax.set_xlabel("context length (tokens)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    paths.append(out_dir / "midtrain_vs_length.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    curves = (("mid", ("ntp", "refine"), ("val_loss", "actor/sft_loss_ttt", "reward/cs_reward_mean", "val_em_score")),
              ("post", ("sft", "refine"), ("actor/sft_loss", "actor/sft_loss_ttt", "reward/hybrid_reward_mean",
                                           "reward/cs_reward_mean")))
    for phase, arms, keys in curves:
        fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.4))
        for ax, key in zip(axes, keys):
            for arm, color in zip(arms, ("tab:blue", "tab:orange")):
                for i, s in enumerate(seeds):
                    metrics = results["runs"].get(f"{phase}/{arm}_s{s}", {}).get("metrics", [])
                    pts = [(m["step"], m[key]) for m in metrics if key in m]
                    if pts:
                        ax.plot(*zip(*pts), color=color, alpha=0.7, marker="." if len(pts) < 30 else None,
                                label=arm if i == 0 else None)
            ax.set_title(key, fontsize=9)
            ax.set_xlabel("step")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(out_dir / f"{phase}train_curves.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def write(results, report_dir: Path) -> list[Path]:
    report_dir = Path(report_dir)
    png = plots(results, report_dir / "results")
    t = tables(results)
    s = results["sizes"]
    pre = results.get("pretrain", {})
    lines = [
        "# Small-scale reproduction: results" + (" (--quick: toy sizes, no claim)" if results.get("quick") else ""),
        "",
        (f"Command: `{results['command']}` (seeds {', '.join(map(str, s['seeds']))}); wall time of this invocation "
         f"{results['wall_s']:.0f} s (stages found cached are not re-run; per-run wall times below)."),
        "",
        (f"Model: fla DeltaNet, {s['num_layers']} layers x {s['hidden_size']} wide, "
         f"{pre.get('parameters', 0) / 1e6:.2f}M parameters, vocab 512. Copy warm-up: {pre.get('copy_steps', 0)} steps "
         f"of {pre.get('copy_batch')} x [x][x] rows, x = {pre.get('copy_span')} random ids (below "
         f"{pre.get('copy_small_vocab')} for the first {pre.get('copy_vocab_steps')} steps, then any). Pre-training: "
         f"{pre.get('steps')} steps x "
         f"{pre.get('batch')} x {pre.get('seq_len')} tokens ({pre.get('tokens')} tokens; a share {pre.get('copy_share')} of "
         f"the windows carries one random span written twice), AdamW lr {pre.get('lr')} cosine, "
         f"{pre.get('wall_s')} s. Data rows: {results.get('data_rows')}. Trainer learning rate (every run, both arms): "
         f"{s['lr']}. NSP: C={s['n_chunks']}, k={s['response_length']}, sampling {s['sampling']}, fast NSP; "
         f"mid-training reward {s['reward']}, ppo_coef {s['ppo_coef']}; post-training reward {s['post_reward']}; "
         f"TTT reward {s['ttt_reward']}, ppo_coef {s['ttt_ppo_coef']}."),
        "",
        "## Mid-training (held-out test documents)",
        "",
        *t["mid"],
        "",
        "## Post-training (held-out synthetic QA, 16 prompts)",
        "",
        *t["post"],
        "",
        (f"## Test-time training (held-out synthetic QA prompts, inner steps: {s['ttt_steps']}, from each seed's "
         "task-SFT model)"),
        "",
        *t["ttt"],
        "",
        "## Sanity: pre-trained vs random init",
        "",
        *t["sanity"],
        "",
        "## Compute (matched between arms)",
        "",
        *compute_rows(results),
        "",
        "## Plots",
        "",
        *[f"![{p.stem}](results/{p.name})" for p in png],
        "",
    ]
    path = report_dir / "results.md"
    path.write_text("\n".join(lines))
    print("\n".join(t["mid"] + [""] + t["post"] + [""] + t["ttt"]))
    return [path, *png]
