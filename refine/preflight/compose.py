"""Where the configs live and how `python -m refine.main` composes them: the one home of `compose`, importable by
the entry point and by the checks (the unknown-key check composes the base config) without a cycle."""

from __future__ import annotations

from pathlib import Path

from refine.preflight.schema import register_defaults

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "configs"
DEFAULT_CONFIG = "refine_trainer"


def compose(overrides: list[str] | None = None, config_name: str = DEFAULT_CONFIG):
    """The composed config (no validation) from `configs/`, as `python -m refine.main` would build it."""
    # Hydra's compose API: kept out of module import so that `--help` and the light checks stay fast
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_defaults()  # the refine.* defaults in Hydra's ConfigStore (idempotent)
    # also callable inside `@hydra.main` (the unknown-key check composes the base config): set the running
    # Hydra aside and put it back
    outer = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            return hydra_compose(config_name=config_name, overrides=list(overrides or []))
    finally:
        if outer is not None:
            GlobalHydra.instance().initialize(outer)
