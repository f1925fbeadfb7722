"""The `refine:` group, the official key aliases and up-front validation (no Ray)."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.trainer.conftest import shrunk_phase_overrides
from refine.preflight.aliases import OFFICIAL_ALIASES
from refine.preflight.prepare import prepare_config
from refine.preflight.schema import REFINE_KEYS


def test_official_overrides_map_onto_refine(compose_config):
    official = [
        "+algorithm.ttt_sft_update=True",
        "+algorithm.ttt_ppo_update=True",
        "+algorithm.val_get_loss=True",
        "+algorithm.ttt_sampling=argmax",
        "+actor_rollout_ref.actor.ttt_n_chunks=2",
        "+actor_rollout_ref.actor.ttt_n=1",
        "+actor_rollout_ref.actor.ttt_reward=hybrid",
        "+actor_rollout_ref.actor.ttt_sft_loss_coef=0.5",
        "+actor_rollout_ref.actor.ttt_ppo_loss_coef=0.4",
        "+actor_rollout_ref.actor.ttt_ppo_mini_batch_size=2",
        "+actor_rollout_ref.actor.ttt_ppo_micro_batch_size_per_gpu=2",
        "+actor_rollout_ref.rollout.ttt_log_prob_micro_batch_size_per_gpu=2",
        "+actor_rollout_ref.rollout.ttt_temperature=0.7",
        "+actor_rollout_ref.rollout.ttt_response_length=4",
        "+actor_rollout_ref.rollout.ttt_top_p=0.9",
        "+actor_rollout_ref.rollout.ttt_top_k=7",
        "+actor_rollout_ref.ref.ttt_log_prob_micro_batch_size_per_gpu=2",
    ]
    config = compose_config(official)
    rc = prepare_config(config)
    expected = dict(sampling="argmax", n_chunks=2, n_per_prefix=1, reward="hybrid", sft_coef=0.5, ppo_coef=0.4,
                    mini_batch_size=2, micro_batch_size_per_gpu=2, log_prob_micro_batch_size_per_gpu=2,
                    temperature=0.7, response_length=4, top_p=0.9, top_k=7)
    for name, value in expected.items():
        assert getattr(rc, name) == value, name
    # the official keys are gone from verl's groups (verl builds dataclasses from them)
    assert "ttt_n_chunks" not in config.actor_rollout_ref.actor
    assert "ttt_sampling" not in config.algorithm
    assert "ttt_log_prob_micro_batch_size_per_gpu" not in config.actor_rollout_ref.ref
    assert config.refine.temperature == 0.7


def test_every_alias_targets_a_refine_key():
    for official, name in OFFICIAL_ALIASES.items():
        assert name is None or name in REFINE_KEYS, official


def test_unknown_refine_key_is_an_error(compose_config):
    config = compose_config(["+refine.n_chunk=3"])
    with pytest.raises(ValueError, match=r"refine\.n_chunk"):
        prepare_config(config)


def test_paths_become_absolute(compose_config):
    config = compose_config()
    prepare_config(config)
    assert config.actor_rollout_ref.model.path.startswith("/")
    assert config.data.train_files.startswith("/")


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        (["trainer.n_gpus_per_node=2", "data.train_batch_size=3", "data.val_batch_size=2"],
         r"data\.train_batch_size=3.*not divisible by the number of workers \(2"),
        (["refine.response_length=21"], r"refine\.response_length=21.*\[1, 20\]"),
        (["refine.ttt_sft_update=false", "refine.ttt_ppo_update=false", "refine.val_get_loss=false"],
         r"no phase is switched on"),
        (["refine.n_chunks=null"], r"refine\.n_chunks=None: missing.*ttt_n_chunks"),
        (["refine.mini_batch_size=4"], r"data\.train_batch_size=2: smaller than refine\.mini_batch_size=4"),
        (["refine.log_prob_micro_batch_size_per_gpu=3", "data.train_batch_size=4", "refine.mini_batch_size=4"],
         r"not divisible by the micro-batch"),
        (["refine.reward=cosine"], r"refine\.reward='cosine'"),
        (["refine.sampling=topk"], r"refine\.sampling='topk'"),
        (["refine.task_sft_update=true"], r"refine\.answer_key=None: task SFT needs the gold answers"),
        (["refine.val_get_loss=false", "trainer.val_before_train=true"], r"refine\.answer_key=None: validation by"),
        (["refine.task_ppo_update=true"], r"refine\.answer_key=None: task GRPO scores rollouts"),
        (["trainer.val_only=true", "trainer.val_before_train=false"], r"trainer\.val_only=True: val_only acts"),
        (["refine.task_ppo_update=true", "actor_rollout_ref.rollout.n=2", "actor_rollout_ref.actor.ppo_mini_batch_size=2",
          "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=3"], r"actor_rollout_ref\.actor\.ppo_mini_batch_size=2"),
    ],
)
def test_bad_config_fails_before_ray(compose_config, overrides, pattern):
    config = compose_config(overrides)
    with pytest.raises(ValueError, match=pattern):
        prepare_config(config)


def test_bad_data_files(compose_config, tmp_path):
    missing = tmp_path / "missing.parquet"
    with pytest.raises(ValueError, match=r"data\.train_files=.*missing\.parquet.*file not found"):
        prepare_config(compose_config([f"data.train_files={missing}"]))

    garbage = tmp_path / "garbage.parquet"
    garbage.write_text("not a parquet file")
    with pytest.raises(ValueError, match=r"unreadable as parquet"):
        prepare_config(compose_config([f"data.val_files={garbage}"]))

    empty = tmp_path / "empty.parquet"
    pd.DataFrame({"text": pd.Series([], dtype=str)}).to_parquet(empty)
    with pytest.raises(ValueError, match=r"has no rows"):
        prepare_config(compose_config([f"data.train_files={empty}"]))

    no_column = tmp_path / "no_column.parquet"
    pd.DataFrame({"body": ["x " * 50]}).to_parquet(no_column)
    with pytest.raises(ValueError, match=r"data\.prompt_key='text': column missing"):
        prepare_config(compose_config([f"data.train_files={no_column}"]))


def test_main_reports_bad_input_in_one_line(tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "refine.main", "+preset=embedded_demo", "refine.response_length=25"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "refine: configuration error: refine.response_length=25" in result.stderr
    assert "Traceback" not in result.stderr


def test_rows_too_short_for_nsp_fail_before_ray(compose_config, tmp_path):
    short = tmp_path / "short.parquet"
    pd.DataFrame({"text": ["def f(x):\n    return x + 1\n" * 20, "x = 1"]}).to_parquet(short)
    with pytest.raises(ValueError, match=r"data\.train_files=.*short\.parquet.*row 1 of column 'text' has \d+ tokens"):
        prepare_config(compose_config([f"data.train_files={short}"]))


def test_missing_model_directory(compose_config, tmp_path):
    with pytest.raises(ValueError, match=r"actor_rollout_ref\.model\.path=.*nowhere.*no local HF model"):
        prepare_config(compose_config([f"actor_rollout_ref.model.path={tmp_path / 'nowhere'}"]))


def test_post_training_bad_input(compose_config, ruler_files, tmp_path):
    from refine.preflight.schema import RefineConfig  # noqa: F401

    train, val = ruler_files
    post = ["refine.task_sft_update=true", "refine.val_get_loss=false", "refine.answer_key=answer",
            "data.prompt_key=prompt", f"data.train_files={train}", f"data.val_files={val}",
            "data.max_prompt_length=96", "data.max_response_length=8", "trainer.test_freq=2"]
    rc = prepare_config(compose_config(post))
    assert rc.data_source_key == "task"  # the RULER files' own column (Q24 c)

    bad_source = tmp_path / "bad_source.parquet"
    frame = pd.read_parquet(val)
    frame.assign(task="ruler_unknown").to_parquet(bad_source)
    with pytest.raises(ValueError, match=r"\['ruler_unknown'\].*no scorer"):
        prepare_config(compose_config(post + [f"data.val_files={bad_source}"]))

    not_a_list = tmp_path / "not_a_list.parquet"
    frame.assign(answer=frame.answer.map(lambda a: str(a[0]))).to_parquet(not_a_list)
    with pytest.raises(ValueError, match=r"refine\.answer_key='answer'.*expected a list of strings"):
        prepare_config(compose_config(post + [f"data.val_files={not_a_list}"]))

    with pytest.raises(ValueError, match=r"data\.max_prompt_length=20: 4 prompt\(s\) of .*train\.parquet are longer.*refine\.on_overlong=error"):
        prepare_config(compose_config(post + ["data.max_prompt_length=20", "refine.on_overlong=error",
                                              "refine.ttt_sft_update=false", "refine.ttt_ppo_update=false"]))

    ttt = ["trainer.val_only=true", "trainer.val_before_train=true", "refine.ttt_sft_update=false", "refine.ttt_ppo_update=false",
           "refine.task_sft_update=false", "refine.val_ttt_sft_update=true", "refine.val_ttt_ppo_update=true",
           "data.val_batch_size=2", "refine.mini_batch_size=4", "data.train_files=null"]
    with pytest.raises(ValueError, match=r"data\.val_batch_size=2: smaller than refine\.mini_batch_size=4"):
        prepare_config(compose_config(post + ttt))


@pytest.mark.parametrize("preset", ["midtrain", "posttrain", "testtimetrain"])
def test_phase_presets_validate(compose_config, ruler_files, preset):
    """The official phase presets compose and pass validation (data and sizes shrunk to the shipped files)."""
    from refine.preflight.official_presets import expected

    config = compose_config(shrunk_phase_overrides(preset, preset, ruler_files), fast=False)
    rc = prepare_config(config)
    # validation keeps the official values (the table, refine/preflight/official_presets.py) it was not told to change
    assert rc.n_chunks == 2 and rc.mini_batch_size == 2
    changed = ("refine.n_chunks", "refine.mini_batch_size", "refine.answer_key")
    kept = {key[len("refine."):]: value for key, value in expected(preset).items()
            if key.startswith("refine.") and key not in changed}
    assert {name: getattr(rc, name) for name in kept} == kept


def test_task_scorer_default_and_custom(tmp_path):
    from omegaconf import OmegaConf

    from refine.scoring.task_scorer import task_scorer, uses_refine_scorer

    default = OmegaConf.create({"reward": {"custom_reward_function": {"path": None, "name": None}},
                                "custom_reward_function": {"path": None, "name": None}})
    assert uses_refine_scorer(default)
    score = task_scorer(default)
    assert score("ruler_squadqa", " William of Volpiano and John\nmore", ["william of volpiano"]) == 1.0
    assert score("ruler_squadqa", "nobody", ["william of volpiano"]) == 0.0

    official = tmp_path / "official_style.py"  # the official fork's signature: response=, answers=, data_source=
    official.write_text("def compute_score(response, answers, data_source):\n"
                        "    return float(response.strip() == answers[0]) + (0.5 if data_source == 'x' else 0.0)\n")
    verl_style = tmp_path / "verl_style.py"  # verl 0.9.1's: solution_str=, ground_truth=, dict with "score"
    verl_style.write_text("def my_score(data_source, solution_str, ground_truth, extra_info=None, bonus=0.0):\n"
                          "    return {'score': float(solution_str in ground_truth) + bonus}\n")
    cfg = OmegaConf.create({"reward": {"custom_reward_function": {"path": None}},
                            "custom_reward_function": {"path": str(official), "name": "compute_score"}})
    assert not uses_refine_scorer(cfg)
    assert task_scorer(cfg)("x", " a ", ["a", "b"]) == 1.5
    cfg = OmegaConf.create({"reward": {"custom_reward_function": {"path": str(verl_style), "name": "my_score",
                                                                  "reward_kwargs": {"bonus": 0.25}}}})
    assert task_scorer(cfg)("y", "b", ["a", "b"]) == 1.25


def test_fast_nsp_mode_refuses_models_without_a_branchable_state(compose_config, tmp_path):
    """A RetNet model directory, or LaCT with its official padding, with refine.nsp_mode=fast: one line naming the
    key, the model type and its family, before Ray. LaCT with lact_exact_padding=True passes this check."""
    import json
    import shutil

    from refine.preflight.compose import REPO_ROOT

    demo = REPO_ROOT / "data" / "demo" / "model"
    assert prepare_config(compose_config(["refine.nsp_mode=fast"])).nsp_mode == "fast"  # the demo DeltaNet runs
    for model_type, pattern in (("lact_swiglu", "lact_exact_padding=True"), ("retnet", "retnet family.*position")):
        model_dir = tmp_path / model_type
        shutil.copytree(demo, model_dir)
        config_file = model_dir / "config.json"
        config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "model_type": model_type}))
        with pytest.raises(ValueError, match=rf"refine\.nsp_mode.*{pattern}.*nsp_mode=faithful") as err:
            prepare_config(compose_config(["refine.nsp_mode=fast", f"actor_rollout_ref.model.path={model_dir}"]))
        assert "\n" not in str(err.value)
    # a real tiny LaCT (with the demo tokenizer) passes with exact padding and is refused without it
    from refine.models.lact import LaCTForCausalLM, tiny_lact_config

    lact_dir = tmp_path / "tiny_lact"
    shutil.copytree(demo, lact_dir, ignore=shutil.ignore_patterns("config.json", "*.safetensors"))
    vocab = json.loads((demo / "config.json").read_text())["vocab_size"]
    LaCTForCausalLM(tiny_lact_config(vocab_size=vocab)).save_pretrained(lact_dir)
    lact = ["refine.nsp_mode=fast", f"actor_rollout_ref.model.path={lact_dir}"]
    with pytest.raises(ValueError, match=r"refine\.nsp_mode.*lact_exact_padding=True"):
        prepare_config(compose_config(lact))
    exact = "+actor_rollout_ref.model.override_config.lact_exact_padding=True"
    assert prepare_config(compose_config([*lact, exact])).nsp_mode == "fast"


def test_fast_nsp_mode_refuses_mini_batches_that_split_a_document(compose_config):
    """2 workers, mini-batch 3 documents of 2 chunks: 3 rollout rows per rank per mini-batch, so the second
    document of each rank is split across two mini-batches."""
    overrides = ["refine.nsp_mode=fast", "trainer.n_gpus_per_node=2", "data.train_batch_size=6",
                 "refine.n_chunks=2", "refine.mini_batch_size=3", "refine.micro_batch_size_per_gpu=1",
                 "refine.log_prob_micro_batch_size_per_gpu=1", "data.val_batch_size=6"]
    with pytest.raises(ValueError, match=r"refine\.mini_batch_size.*splits a document"):
        prepare_config(compose_config(overrides))
    # the same sizes are valid in the faithful mode (the official arithmetic allows them)
    assert prepare_config(compose_config(overrides[1:])).nsp_mode == "faithful"


@pytest.mark.parametrize("override,suggestion", [
    ("+foo_bar=1", None),
    ("+trainer.save_freqq=1", "trainer.save_freq"),
    ("+actor_rollout_ref.actor.ttt_n_chunk=8", "actor_rollout_ref.actor.ttt_n_chunks"),
])
def test_unknown_and_misspelt_keys_are_refused_with_a_suggestion(compose_config, override, suggestion):
    key = override[1:].split("=")[0]
    with pytest.raises(ValueError, match=rf"^{key}=.*unknown key") as err:
        prepare_config(compose_config([override]))
    assert "\n" not in str(err.value)
    if suggestion:
        assert f"did you mean {suggestion}?" in str(err.value)


def test_free_form_sections_and_official_keys_are_not_unknown(compose_config):
    rc = prepare_config(compose_config([
        "+actor_rollout_ref.model.override_config.lact_exact_padding=True",
        "+actor_rollout_ref.actor.ttt_n_chunks=2",
        "+ray_kwargs.ray_init.num_gpus=0",
    ]))
    assert rc.n_chunks == 2


def broken_model_dir(tmp_path, damage: str):
    """A copy of the demo model with one defect."""
    import json
    import shutil

    from refine.preflight.compose import REPO_ROOT

    model_dir = tmp_path / damage
    shutil.copytree(REPO_ROOT / "data" / "demo" / "model", model_dir)
    weights = model_dir / "model.safetensors"
    if damage == "no_config":
        (model_dir / "config.json").unlink()
        (model_dir / "tokenizer_config.json").write_text((model_dir / "tokenizer_config.json").read_text())
    elif damage == "no_weights":
        weights.unlink()
    elif damage == "truncated_weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "wrong_architecture":
        config = json.loads((model_dir / "config.json").read_text())
        (model_dir / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    elif damage == "unknown_model_type":
        config = json.loads((model_dir / "config.json").read_text())
        (model_dir / "config.json").write_text(json.dumps({**config, "model_type": "not_a_model"}))
    elif damage == "no_tokenizer":
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (model_dir / name).unlink(missing_ok=True)
    elif damage == "no_eos_no_pad":
        tok = json.loads((model_dir / "tokenizer_config.json").read_text())
        tok.pop("eos_token", None), tok.pop("pad_token", None)
        (model_dir / "tokenizer_config.json").write_text(json.dumps(tok))
        (model_dir / "special_tokens_map.json").unlink(missing_ok=True)
    return model_dir


@pytest.mark.parametrize("damage,pattern", [
    ("no_config", "no config.json"),
    ("no_weights", "no weights"),
    ("truncated_weights", "model.safetensors is unreadable"),
    ("wrong_architecture", "do not match the delta_net architecture"),
    ("unknown_model_type", "config.json does not load"),
    ("no_tokenizer", "no tokenizer loads from this folder"),
    ("no_eos_no_pad", "neither an EOS nor a pad token"),
])
def test_broken_model_folders_fail_before_ray_naming_the_path(compose_config, tmp_path, damage, pattern):
    model_dir = broken_model_dir(tmp_path, damage)
    with pytest.raises(ValueError, match=pattern) as err:
        prepare_config(compose_config([f"actor_rollout_ref.model.path={model_dir}"]))
    assert str(model_dir) in str(err.value) and "Fix:" in str(err.value) and "\n" not in str(err.value)


def test_a_checkpoint_folder_that_cannot_be_written_fails_before_ray(compose_config, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match=r"trainer.default_local_dir=.*is not a folder"):
        prepare_config(compose_config([f"trainer.default_local_dir={blocker / 'run'}"]))


@pytest.mark.parametrize("cells,pattern", [([1, 2, 3], "expected a string, got int"),
                                           ([["a", "b"], ["c"]], "expected a string, got list")])
def test_text_columns_of_the_wrong_type_name_file_column_and_row(compose_config, tmp_path, cells, pattern):
    path = tmp_path / "bad.parquet"
    pd.DataFrame({"text": cells}).to_parquet(path)
    with pytest.raises(ValueError, match=rf"data.train_files {path}.*column 'text' row 0: {pattern}"):
        prepare_config(compose_config([f"data.train_files={path}"]))


def test_rows_too_short_for_c_prefixes_are_counted_in_a_warning(compose_config, tmp_path, capsys):
    """C = 2, k = 3: rows under 2 * 23 = 46 tokens run, but their first prefix sits on the clamp: a warning with
    the count (the long row is not counted)."""
    from transformers import AutoTokenizer

    from refine.preflight.compose import REPO_ROOT

    tokenizer = AutoTokenizer.from_pretrained(REPO_ROOT / "data" / "demo" / "model")
    text = "def f(x):\n    return x + 1\n"
    short = " ".join([text] * 2)
    assert 23 <= len(tokenizer(short)["input_ids"]) < 46  # long enough to run, too short for 2 full prefixes
    path = tmp_path / "mixed.parquet"
    pd.DataFrame({"text": [short, text * 40, short]}).to_parquet(path)
    prepare_config(compose_config([f"data.train_files={path}"]))
    out = capsys.readouterr().out
    assert f"2 of 3 rows of {path} have fewer than n_chunks * (20 + k) = 46 tokens" in out


def test_each_nsp_limit_has_one_home_that_validation_follows(compose_config, monkeypatch):
    """Change the clamp margin, the sampling modes or the reward kinds in refine.nsp only: the config check
    follows (k = 15 is valid with the official margin 20 and refused with 10), and so does `--help`."""
    from refine.main import help_text
    from refine.nsp import positions, rewards

    assert prepare_config(compose_config(["refine.response_length=15"])).response_length == 15
    monkeypatch.setattr(positions, "CLAMP_MARGIN", 10)
    with pytest.raises(ValueError, match=r"^refine.response_length=15: .*\[1, 10\]"):
        prepare_config(compose_config(["refine.response_length=15"]))
    assert "in [1, 10]" in help_text()  # the documentation follows too
    monkeypatch.undo()
    monkeypatch.setattr(positions, "SAMPLING_MODES", ("entropy",))
    with pytest.raises(ValueError, match=r"^refine.sampling='uniform': must be one of \('entropy',\)"):
        prepare_config(compose_config(["refine.sampling=uniform"]))
    assert "chosen; one of entropy\n" in help_text()
    monkeypatch.setattr(rewards, "REWARD_KINDS", ("binary",))
    with pytest.raises(ValueError, match=r"^refine.reward='cosine_similarity': must be one of \('binary',\)"):
        prepare_config(compose_config([]))


@pytest.mark.parametrize("overrides,pattern", [
    (["algorithm.adv_estimator=gae"], r"^algorithm.adv_estimator='gae': ReFINE computes GRPO"),
    (["actor_rollout_ref.rollout.name=vllm"], r"^actor_rollout_ref.rollout.name='vllm': ReFINE rolls out with HF"),
])
def test_ignored_engines_and_conflicting_aliases_are_refused(compose_config, overrides, pattern):
    with pytest.raises(ValueError, match=pattern):
        prepare_config(compose_config(overrides))


def test_both_spellings_of_one_setting_on_a_command_line_must_agree():
    import subprocess
    import sys

    from refine.preflight.aliases import alias_conflicts

    line = alias_conflicts(["refine.n_chunks=3", "+actor_rollout_ref.actor.ttt_n_chunks=2", "x=1"])
    assert line.startswith("+actor_rollout_ref.actor.ttt_n_chunks=2: conflicts with refine.n_chunks=3")
    assert alias_conflicts(["refine.n_chunks=2", "+actor_rollout_ref.actor.ttt_n_chunks=2"]) is None
    result = subprocess.run([sys.executable, "-m", "refine.main", "refine.n_chunks=3",
                             "+actor_rollout_ref.actor.ttt_n_chunks=2"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith(
        "refine: configuration error: +actor_rollout_ref.actor.ttt_n_chunks=2: conflicts")


@pytest.mark.parametrize("override,pattern", [
    ("+actor_rollout_ref.actor.ttt_n_chunks=0", r"^actor_rollout_ref\.actor\.ttt_n_chunks=0: must be >= 1"),
    ("+actor_rollout_ref.rollout.ttt_temperature=abc",
     r"^actor_rollout_ref\.rollout\.ttt_temperature='abc': must be a finite number or null"),
    ("+algorithm.ttt_sampling=topk", r"^algorithm\.ttt_sampling='topk': must be one of"),
    ("+actor_rollout_ref.rollout.ttt_response_length=25",
     r"^actor_rollout_ref\.rollout\.ttt_response_length=25: .*\[1, 20\]"),
    ("+actor_rollout_ref.actor.ttt_ppo_mini_batch_size=4",
     r"^data\.train_batch_size=2: smaller than actor_rollout_ref\.actor\.ttt_ppo_mini_batch_size=4 .*"
     r"lower actor_rollout_ref\.actor\.ttt_ppo_mini_batch_size$"),
])
def test_an_error_about_a_value_given_through_an_official_key_names_that_key(compose_config, override, pattern):
    """The per-field checks (the dataclass) and the cross-field rules alike name the key the user typed."""
    with pytest.raises(ValueError, match=pattern) as err:
        prepare_config(compose_config([override]))
    name = OFFICIAL_ALIASES[override[1:].split("=")[0]]
    assert f"refine.{name}" not in str(err.value) and "\n" not in str(err.value)
    # the same value under the refine.* name is reported under that name
    with pytest.raises(ValueError, match=rf"refine\.{name}="):
        prepare_config(compose_config([f"refine.{name}={override.split('=', 1)[1]}"]))


@pytest.mark.parametrize("fields,pattern", [
    ({"n_per_prefix": 0}, r"^refine\.n_per_prefix=0: must be >= 1"),
    ({"sft_coef": float("nan")}, r"^refine\.sft_coef=nan: must be a finite number"),
    ({"plot": "yes"}, r"^refine\.plot='yes': must be true or false"),
    ({"seed": 1.5}, r"^refine\.seed=1\.5: must be a whole number"),
    ({"top_p": 0.0}, r"^refine\.top_p=0\.0: must be in \(0, 1\]"),
    ({"top_k": -1}, r"^refine\.top_k=-1: must be >= 0"),
    ({"ttt_reset": "epoch"}, r"^refine\.ttt_reset='epoch': must be one of \('cumulative', 'batch'\)"),
])
def test_the_refine_dataclass_checks_each_field_itself(fields, pattern):
    from refine.preflight.schema import RefineConfig

    with pytest.raises(ValueError, match=pattern):
        RefineConfig(**fields)


def test_the_yaml_restates_no_default_and_the_group_is_built_through_its_target(compose_config):
    """configs/refine_trainer.yaml holds only the refine group's `_target_`; the composed group has every field at
    the dataclass default (so `refine.<key>=v` needs no `+`), and the dataclass is built from it via `_target_`."""
    import dataclasses

    from omegaconf import OmegaConf

    from refine.preflight.compose import CONFIG_DIR, compose
    from refine.preflight.schema import RefineConfig, refine_config_from

    assert list(OmegaConf.load(CONFIG_DIR / "refine_trainer.yaml").refine) == ["_target_"]
    group = OmegaConf.to_container(compose([]).refine)
    target = group.pop("_target_")
    assert group == {f.name: f.default for f in dataclasses.fields(RefineConfig)}
    assert target == f"{RefineConfig.__module__}.{RefineConfig.__qualname__}"
    built = refine_config_from(compose(["refine.n_chunks=3", "refine.reward=binary"]))
    assert isinstance(built, RefineConfig) and (built.n_chunks, built.reward, built.top_p) == (3, "binary", 1.0)
