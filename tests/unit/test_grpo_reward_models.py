"""rl: grpo with reward models as rewards, without weights: the config keys (a folder path in
trl.reward_funcs, trl.reward_model_path, reward_weights counting it) and the folder checks, each a
UserError naming the key and the value. tests/e2e/test_grpo_reward_model.py scores with them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import make_config, write_jsonl

from tuner.errors import UserError
from tuner.train.rewards import RewardModel, load_reward_functions


def grpo(tmp_path, **trl):
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Hi"}])
    return make_config(tmp_path, base_model="x", rl="grpo", datasets=[{"path": str(data)}], micro_batch_size=4,
                       max_steps=1, learning_rate=1e-5, output_dir=str(tmp_path / "o"),
                       trl={"num_generations": 4, **trl})


def folder(path: Path, config: dict | None, name: str = "config.json") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (path / name).write_text(json.dumps(config))
    return path


CLASSIFIER = {"architectures": ["LlamaForSequenceClassification"], "id2label": {"0": "LABEL_0"}}


def test_config_accepts_reward_model_folders(tmp_path):
    cfg = grpo(tmp_path, reward_funcs=["./rm", "rw.f"], reward_model_path="other", reward_weights=[1.0, 2.0, 0.5])
    assert cfg.preference.trl.reward_model_path == "other"
    assert grpo(tmp_path, reward_model_path="rm").preference.trl.reward_funcs is None  # a model alone is enough


@pytest.mark.parametrize("trl, message", [
    ({"reward_funcs": ["rm"]}, "'rm' is not a dotted path module.function (e.g. rewards.format_reward), nor a reward "
                               "model folder written as a path (./rm, models/rm)"),
    ({"reward_funcs": ["rw.f"], "reward_model_path": "rm", "reward_weights": [1.0]},
     "1 weight(s) for 2 reward function(s) (reward_funcs and reward_model_path)"),
    ({"reward_model_path": " "}, "trl.reward_model_path"),
    ({}, "rl: grpo needs reward functions"),
])
def test_config_refusals(tmp_path, trl, message):
    with pytest.raises(UserError) as err:
        grpo(tmp_path, **trl)
    assert message in str(err.value)


def test_reward_model_path_needs_grpo(tmp_path):
    data = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "a", "output": "b"}])
    with pytest.raises(UserError, match="trl.reward_model_path is a GRPO setting"):
        make_config(tmp_path, base_model="x", datasets=[{"path": str(data), "type": "alpaca"}], max_steps=1,
                    learning_rate=1e-5, output_dir=str(tmp_path / "o"), trl={"reward_model_path": "rm"})


def test_folders_are_found_next_to_the_config_and_named_by_their_basename(tmp_path):
    folder(tmp_path / "cfg" / "models" / "rm", CLASSIFIER)
    folder(tmp_path / "cfg" / "scorer", {"num_labels": 1}, "head_config.json")
    (tmp_path / "cfg" / "scorer" / "adapter_config.json").write_text("{}")  # tuner's LoRA reward model
    funcs = load_reward_functions(["models/rm/"], [2.0, 0.5], tmp_path / "cfg", "scorer")
    assert [f.short for f in funcs] == ["rm", "scorer"] and [f.weight for f in funcs] == [2.0, 0.5]
    assert all(isinstance(f.fn, RewardModel) for f in funcs)
    assert funcs[0].fn.folder == tmp_path / "cfg" / "models" / "rm" and funcs[0].fn.model is None  # weights: later


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "trl.reward_model_path (rm): no folder 'rm' (looked for "),
    (lambda p: folder(p, None), "holds no config.json: not a model folder"),
    (lambda p: folder(p, {"architectures": ["LlamaForCausalLM"]}), "is a LlamaForCausalLM; a reward model is a "
                                                                   "sequence classifier with one output"),
    (lambda p: folder(p, {**CLASSIFIER, "id2label": {"0": "a", "1": "b"}}), "is a sequence classifier with 2 labels"),
    (lambda p: folder(p, {"num_labels": 1}, "adapter_config.json"), "is a model without a sequence-classification head"),
])
def test_bad_folders_name_the_key_and_value(tmp_path, make, message):
    make(tmp_path / "rm")
    with pytest.raises(UserError) as err:
        load_reward_functions([], None, tmp_path, "rm")
    assert message in str(err.value)


def test_same_names_get_distinct_metric_names(tmp_path):
    (tmp_path / "length.py").write_text("def length(prompts, completions, **kw):\n    return [0.0] * len(completions)\n")
    folder(tmp_path / "length", CLASSIFIER)
    funcs = load_reward_functions(["length.length", "./length"], None, tmp_path)
    assert [f.short for f in funcs] == ["length", "length_1"]
