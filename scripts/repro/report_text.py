"""The report's prose, written after the run from its tables (the numbers in it are quoted, not computed): how the
study was run, its reading, and the history of the studies before it."""

HISTORY = (
    "History. Two studies came before this one. The first (issue 13, commit `7e7bb1a`) compared ReFINE with NTP on a "
    "1.2M-parameter DeltaNet and found no gain in any phase, from a design that could not tell a defect from a scale "
    "effect: the ReFINE arm took 2 AdamW steps per global step (3 in post-training) against 1 for its baseline, "
    "mid-training stayed at the pre-training length, its retrieval measures sat at 0 for every model, and its numbers "
    "came from an uncommitted work dir. Version 1 of this study (commit `267ac3b`, study version `kv-retrieval-v1`) "
    "fixed those (matched updates, context extension from L to 4L, planted-pair retrieval, a committed results file) "
    "but its positive controls did not move (NTP mid-training vs the pre-trained model +2.1 pp [-1.7, +6.2]; NTP "
    "with 2x the updates, one seed, +0.0 pp), and its controls and ablations ran on one seed, so its nulls could not "
    "be read. This version keeps its design and replaces the control that could not move with one that can (the "
    "model trained on the task directly), runs every control and ablation on three seeds and doubles the items."
)


READING = (
    "Reading (written after the run, from the tables here). The study can now tell a null from a blind spot: its "
    "positive control moved. Training the pre-trained model on the task directly (64 task-SFT updates with inner "
    "NTP, the post-training control) raises exact match on the primary bins by +9.2 pp [+5.8, +12.8] (C2), so an "
    "effect of that size would have been seen. NTP mid-training at 4L does not move the measure (C1, -0.3 pp "
    "[-2.7, +2.1]), as the validation-split pilot had shown for eight settings (up to 8x the updates): at this budget, context "
    "extension by NTP alone does not teach this model retrieval beyond L. Against that baseline, ReFINE mid-training "
    "(the official mix) retrieves +1.4 pp [-0.1, +3.1] better than NTP: null by the pre-registered rule, with an "
    "interval almost entirely above 0 (per bin, secondary and uncorrected: +1.9 [+0.0, +4.2] at 128-256, +1.0 "
    "[+0.0, +3.1] at 512-1024). So a gain over NTP larger than about 3 pp and a loss larger than about 0.1 pp are "
    "ruled out at this scale; a small gain is neither shown nor excluded. Both ablations are worse than the official "
    "configuration, with intervals excluding 0: GRPO groups of 4 rollouts of one prefix instead of the official C=4 "
    "prefixes of one document (A1, -1.7 pp [-3.3, -0.3]), and RL alone without the NTP term (A2, -4.3 pp [-8.1, "
    "-1.0]). RL alone also costs 0.29 nats of NTP loss, and it is the collapse the chance level is there to catch: "
    "its cosine reward rises (0.37 to 0.42) with its chance level (0.30 to 0.35), the reward above chance stays flat, "
    "and its own hidden states are the most collinear (0.340). In post-training ReFINE adds nothing to task SFT (H2, "
    "-0.2 pp [-1.5, +1.0]); at test time NSP-GRPO against NTP alone at equal updates is null with a wide interval "
    "(H3, +1.6 [-6.2, +8.9], 64 items), and TTT itself does not help here (C3, -5.2 [-13.5, +2.1]). ReFINE's NTP, "
    "short-context and trainer validation losses differ from NTP's by at most 0.01 nats (validation loss +0.010 "
    "[-0.001, +0.021], not a gain). What these nulls cannot rule out: effects that need a larger model, the paper's "
    "16K contexts, or more mid-training than a 2-core budget allows."
)


RUN_NOTES = (
    "How the full study was run. The sizes were fixed before this run from a pilot on the validation split "
    "(`scripts/repro/pilot.py`, seed 1, 128 validation items per bin, plain NTP or task training from the pre-trained "
    "model; its lines are in `docs/results/pilot_validation.log`): eight NTP mid-training settings (lr 1e-4 to 1e-3, "
    "32 to 256 updates, 4 to 16 pairs per document, at any distance or only beyond 64 or 128 tokens) moved exact "
    "match on the two primary bins by -5.1 to +2.8 pp on average, while 64 updates of task training moved it by "
    "+6.6 pp (lr 3e-4, the study's learning rate; +24.6 pp at lr 1e-3). One invocation, from a frozen worktree of the "
    "commit above (`PYTHONPATH` pointing at it), its work dir seeded with version 1's data splits and pre-trained "
    "checkpoint (the same sizes, so the cached stage is identical; its pre-training time, measured in version 1, is "
    "in the model line). The 2-core machine was shared with four other engineers' test runs the whole time (1-minute "
    "load average 10 to 33 when sampled), so every wall time here is inflated (trainer runs took 160-560 s each, "
    "mostly waiting for the cores), and the 60-minute budget was not met under that load: 93.6 minutes for this "
    "invocation plus 26 minutes of pre-training. Its time alone on 2 cores was not measured. The trainer runs are "
    "deterministic: the mid-training NTP and ReFINE models are those of version 1 (same sizes and seeds; every "
    "secondary measure equal to four decimals); only the held-out items changed."
)
