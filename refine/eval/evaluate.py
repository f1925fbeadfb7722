"""Greedy generation of an HF causal LM over a RULER-layout parquet file, scored per task.

The decoding follows the official validation generation (official-behaviour.md §2.D, Q9, Q12): raw-text prompts
without BOS, left padding with pad = EOS, greedy decoding until EOS or `max_new_tokens`, the new tokens decoded with
special tokens skipped. Rows are scored with `ruler.score(mode=...)` ("all" for NIAH, RULER's string_match_all).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from refine.eval.niah import COLUMNS
from refine.scoring import ruler
from refine.scoring.report import corpus_report


def greedy_generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 1) -> list[str]:
    """Greedy continuations of `prompts` (decoded new tokens only, special tokens skipped).

    Prompts are tokenised without special tokens and left-padded with the pad id (EOS when the tokenizer has no
    pad token, as on the real checkpoints).
    """
    import torch

    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    outputs: list[str] = []
    for start in range(0, len(prompts), batch_size):
        encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts[start : start + batch_size]]
        width = max(len(ids) for ids in encoded)
        input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, ids in enumerate(encoded):
            if ids:
                input_ids[row, width - len(ids) :] = torch.tensor(ids)
                attention_mask[row, width - len(ids) :] = 1
        with torch.no_grad():
            generated = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        outputs += tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True)
    return outputs


def read_ruler_file(path: str | Path):
    """A RULER-layout parquet (the shipped `data/ruler/` files or `niah.write_niah_files` output), columns checked."""
    import pandas as pd

    frame = pd.read_parquet(path)
    missing = [column for column in ("prompt", "answer", "task") if column not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected the RULER layout {list(COLUMNS)}")
    return frame


def evaluate_frame(
    model,
    tokenizer,
    frame,
    max_new_tokens: int | None = None,
    batch_size: int = 1,
    mode: str = "all",
    limit: int | None = None,
    predictions_path: str | Path | None = None,
) -> tuple[dict, list[str]]:
    """Generate for every row of a RULER-layout `frame` and score it; returns (report, predictions).

    `max_new_tokens=None` uses the frame's largest `max_answer_length`. The report is
    `refine.scoring.report.corpus_report` output: per task ×100 mean and n, and "average" over the tasks.
    With `predictions_path`, each answered row is appended there at once (task, index, answer, prediction, JSON
    lines) and rows already in the file are not generated again, so an interrupted evaluation resumes. A progress
    bar (with ETA) counts the rows.
    """
    import json

    from tqdm import tqdm

    if limit is not None:
        frame = frame.groupby("task", sort=False).head(limit)
    if max_new_tokens is None:
        if "max_answer_length" not in frame.columns:
            raise ValueError("max_new_tokens is required when the frame has no max_answer_length column")
        max_new_tokens = int(frame["max_answer_length"].max())
    indices = list(frame["index"]) if "index" in frame.columns else list(range(len(frame)))
    keys = [(str(task), int(index)) for task, index in zip(frame["task"], indices)]
    done: dict[tuple[str, int], str] = {}
    path = Path(predictions_path) if predictions_path is not None else None
    if path is not None and path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                done[(str(row["task"]), int(row["index"]))] = row["prediction"]
        print(f"resuming: {sum(k in done for k in keys)} of {len(keys)} rows already answered in {path}", flush=True)
    todo = [i for i, key in enumerate(keys) if key not in done]
    prompts, answers = list(frame["prompt"]), list(frame["answer"])
    sink = None
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        sink = open(path, "a", encoding="utf-8")
    try:
        with tqdm(total=len(keys), initial=len(keys) - len(todo), desc="NIAH rows", unit="row") as bar:
            for start in range(0, len(todo), batch_size):
                rows = todo[start : start + batch_size]
                outputs = greedy_generate(model, tokenizer, [prompts[i] for i in rows], max_new_tokens, batch_size)
                for i, prediction in zip(rows, outputs):
                    done[keys[i]] = prediction
                    if sink is not None:
                        sink.write(json.dumps({"task": keys[i][0], "index": keys[i][1], "answer": list(answers[i]),
                                               "prediction": prediction}, ensure_ascii=False) + "\n")
                        sink.flush()
                bar.update(len(rows))
    finally:
        if sink is not None:
            sink.close()
    predictions = [done[key] for key in keys]
    scores = [ruler.score(p, list(a), mode=mode) for p, a in zip(predictions, answers)]
    return corpus_report(list(frame["task"]), scores), predictions
