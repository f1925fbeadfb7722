"""Warnings nobody can act on, silenced in the driver and in every Ray process (a light module: the entry point
reads it before anything heavy is imported)."""

from __future__ import annotations

import os

# warnings a user cannot act on, emitted on import by verl / fla in every process (engines this project never
# uses, fla's CPU fallback that refine.models handles, verl's notice about the legacy trainer class it extends)
IRRELEVANT_WARNINGS = (
    "ignore:torchtitan engine is not available",
    "ignore:veomni engine is not available",
    "ignore:automodel engine is not available",
    "ignore:mindspeed engine is not available",
    "ignore:megatron engine is not available",
    "ignore:Triton is not supported on current platform",
    "ignore:Disabled critic as algorithm.adv_estimator",
    "ignore:'set_vital' is deprecated",
    "ignore:tokenizer.pad_token_id is None",  # pad = EOS, as officially (README, Models)
    "ignore::FutureWarning:refine.driver.ray_trainer",
)


def quiet_warnings_env() -> str:
    """PYTHONWARNINGS for the driver and every Ray process: the user's own filters first, then ours."""
    return ",".join(filter(None, [os.environ.get("PYTHONWARNINGS", ""), *IRRELEVANT_WARNINGS]))
