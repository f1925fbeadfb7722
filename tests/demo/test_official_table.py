"""The official hyper-parameters have one home, refine/preflight/official_presets.py (spec §3 tables and the Q24
fixes): the phase presets and the demo scripts' command lines are checked against it here.

Each command line is recorded from its script (a stand-in interpreter, nothing runs), parsed with Hydra's own
override parser, and composed as `python -m refine.main` composes it, with the official keys mapped onto refine.*.
"""

import pytest
from omegaconf import OmegaConf

from refine.preflight.compose import CONFIG_DIR
from refine.preflight.aliases import OFFICIAL_ALIASES
from refine.preflight.official_presets import FIXES, NOT_IN_PRESETS, OFFICIAL, PHASES, expected

# the data and model only need to be named (composition reads no file)
SCRIPT_ENV = {"SMOKE": "0", "TRAIN_FILES": "/data/train.parquet", "VAL_FILES": "/data/val.parquet"}


def composed(overrides: list[str]):
    """The config `python -m refine.main <overrides>` runs on, official keys moved onto refine.*."""
    from refine.preflight.compose import compose
    from refine.preflight.aliases import apply_official_aliases

    config = compose(overrides)
    apply_official_aliases(config)
    return config


def values(config, keys) -> dict:
    out = {}
    for key in keys:
        value = OmegaConf.select(config, key, throw_on_missing=True)
        out[key] = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    return out


def test_each_fix_changes_an_official_value_and_says_why():
    for phase in PHASES:
        for key, (value, why) in FIXES[phase].items():
            assert OFFICIAL[phase].get(key) != value and why.startswith("Q24"), (phase, key)


# each phase preset, and the GPU presets built on it (configs/preset/gpu_<phase>.yaml: the phase preset plus the
# GPU set-up, every official value unchanged)
PRESETS = [(phase, name) for phase in PHASES for name in (phase, f"gpu_{phase}") if (CONFIG_DIR / "preset" /
                                                                                   f"{name}.yaml").exists()]


@pytest.mark.parametrize("phase,preset", PRESETS)
def test_phase_preset_holds_the_official_values(phase, preset):
    want = {key: value for key, value in expected(phase).items() if key not in NOT_IN_PRESETS}
    assert values(composed([f"+preset={preset}"]), want) == want


@pytest.mark.parametrize("phase", PHASES)
def test_demo_script_command_holds_the_official_values(record_command, tmp_path, phase):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = record_command(tmp_path, phase, SCRIPT_ENV)
    given = {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(overrides)}
    # the scripts keep the official command lines: the ReFINE keys under their official names (spec §3)
    assert not [key for key in given if key.startswith("refine.")]
    explicit = {f"refine.{OFFICIAL_ALIASES[key]}" if OFFICIAL_ALIASES.get(key) else key: value
                for key, value in given.items()}
    table = expected(phase)
    assert {key: explicit[key] for key in table if key in explicit} == {
        key: value for key, value in table.items() if key in explicit}
    # what the script leaves unset comes from the base config, and must be the official value too
    assert values(composed(overrides), table) == table
