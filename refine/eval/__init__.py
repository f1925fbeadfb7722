"""Evaluation: offline RULER-style NIAH data (`niah`), greedy-generation scoring of HF models (`evaluate`), and
the lm-evaluation-harness registration of our models (`harness`, needs the optional `eval` extra)."""
