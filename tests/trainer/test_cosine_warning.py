"""The one start-up warning for NSP-GRPO with the cosine reward and no NTP term (`refine.sft_coef=0`)."""

from __future__ import annotations

import pytest

WARNING = "WARNING: refine.sft_coef=0 with refine.reward="


def warning_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().out.splitlines() if "WARNING" in line and "sft_coef" in line]


@pytest.mark.parametrize("reward", ["cosine_similarity", "hybrid"])
def test_cosine_reward_without_ntp_warns_once_before_ray(compose_config, capsys, reward):
    from refine.preflight.prepare import prepare_config

    prepare_config(compose_config(["refine.sft_coef=0", f"refine.reward={reward}"]))
    lines = warning_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith(WARNING + reward), lines
    assert "reward/cs_reward_above_chance_mean" in lines[0]  # names the metric to watch


@pytest.mark.parametrize("overrides", [
    [],  # the official mix (sft_coef=1, ppo_coef=0.2, cosine)
    ["refine.sft_coef=0", "refine.reward=binary"],  # exact match cannot be gamed by moving hidden states
    ["refine.sft_coef=0", "refine.ttt_ppo_update=false"],  # no NSP-GRPO: no reward at all
])
def test_no_warning_otherwise(compose_config, capsys, overrides):
    from refine.preflight.prepare import prepare_config

    rc = prepare_config(compose_config(overrides))
    assert warning_lines(capsys) == []
    if not overrides:
        assert (rc.sft_coef, rc.ppo_coef, rc.reward) == (1.0, 0.2, "cosine_similarity")
