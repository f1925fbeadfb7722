"""The task scorer of validation by generation and task GRPO: `refine.scoring` by data source, or the function
named by `reward.custom_reward_function.{path,name}` (verl) / top-level `custom_reward_function.{path,name}` (the
official command lines), called with verl's (`solution_str`, `ground_truth`) or the official fork's (`response`,
`answers`) keywords, whichever it takes."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from omegaconf import OmegaConf

from refine.scoring.reward import score_response

Scorer = Callable[[str, str, list[str]], float]


def custom_reward_spec(config) -> tuple[str | None, str, dict]:
    """(path, function name, extra kwargs) of a configured custom reward function, path None when none is set."""
    for key in ("reward.custom_reward_function", "custom_reward_function"):
        spec = OmegaConf.select(config, key)
        if spec is not None and spec.get("path"):
            kwargs = spec.get("reward_kwargs") or {}
            return str(spec.path), spec.get("name") or "compute_score", dict(kwargs)
    return None, "compute_score", {}


def uses_refine_scorer(config) -> bool:
    """Whether scoring goes through `refine.scoring` (no custom function, or refine's own reward.py)."""
    path, _, _ = custom_reward_spec(config)
    return path is None or path.replace("\\", "/").endswith(("refine/scoring/reward.py", "refine.scoring.reward"))


def task_scorer(config) -> Scorer:
    """score(data_source, response_text, answers) -> float in the configured way."""
    path, name, kwargs = custom_reward_spec(config)
    if path is None:
        return lambda source, text, answers: float(score_response(source, text, answers))
    from verl.utils.import_utils import load_extern_object  # verl: only a run with a custom reward function needs it

    fn = load_extern_object(module_path=path, object_name=name)
    params = inspect.signature(fn).parameters
    official = "response" in params and "solution_str" not in params

    def score(source: str, text: str, answers: list[str]) -> float:
        if official:
            result = fn(response=text, answers=answers, data_source=source, **kwargs)
        else:
            result = fn(data_source=source, solution_str=text, ground_truth=answers, extra_info={}, **kwargs)
        return float(result["score"] if isinstance(result, dict) else result)

    return score
