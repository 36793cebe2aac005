"""`rl:` and its keys, as Axolotl writes them: accepted where they mean something, refused
(naming the key and what to do) where they do not."""

from __future__ import annotations

import pytest

from helpers import make_config, write_jsonl
from tuner.config import ConfigError


def config(tmp_path, **values):
    data = write_jsonl(tmp_path / "pairs.jsonl", [{"messages": [{"role": "user", "content": "Hi"}], "chosen": "Hello.",
                                                   "rejected": "Go."}])
    base = dict(base_model="HuggingFaceTB/SmolLM2-135M-Instruct", learning_rate=5e-5, max_steps=1,
                datasets=[{"path": str(data), "type": "chat_template.default"}], rl="dpo")
    base.update(values)
    return make_config(tmp_path, **{k: v for k, v in base.items() if v is not None})


def refused(tmp_path, **values) -> str:
    with pytest.raises(ConfigError) as info:
        config(tmp_path, **values)
    return str(info.value)


def test_an_axolotl_dpo_config_validates(tmp_path):
    cfg = config(tmp_path, rl_beta=0.2, dpo_loss_type=["sigmoid", "sft"], dpo_loss_weights=[1.0, 0.3])
    assert cfg.preference.rl == "dpo" and cfg.preference.beta == 0.2
    assert cfg.data.datasets[0].kind == "chat_template.default"


def test_dpo_beta_is_read_as_rl_beta_with_a_notice(tmp_path):
    cfg = config(tmp_path, dpo_beta=0.3)
    assert cfg.preference.rl_beta == 0.3
    assert any("rl_beta" in str(n) for n in cfg.notices)


def test_trl_beta_and_rl_beta_must_agree(tmp_path):
    assert config(tmp_path, trl={"beta": 0.4}).preference.beta == 0.4
    assert "rl_beta 0.2 and trl.beta 0.4 differ" in refused(tmp_path, rl_beta=0.2, trl={"beta": 0.4})


@pytest.mark.parametrize("key,value,method", [("orpo_alpha", 0.1, "orpo"), ("simpo_gamma", 0.5, "simpo"),
                                              ("kto_desirable_weight", 1.0, "kto"), ("rpo_alpha", 0.5, "dpo")])
def test_a_method_s_own_key_is_refused_with_another_method(tmp_path, key, value, method):
    other = "ipo" if method == "dpo" else "dpo"
    msg = refused(tmp_path, rl=other, **{key: value})
    assert f"{key} (" in msg and f"applies to rl: {method}" in msg and f"not to rl: {other}" in msg


def test_preference_keys_without_rl_are_refused(tmp_path):
    msg = refused(tmp_path, rl=None, rl_beta=0.1)
    assert "rl_beta" in msg and "rl is not" in msg
    msg = refused(tmp_path, rl=None)
    assert "'chat_template.default' is a preference dataset type: it needs `rl:`" in msg


def test_an_sft_type_under_rl_is_refused_with_the_preference_types(tmp_path):
    msg = refused(tmp_path, datasets=[{"path": str(write_jsonl(tmp_path / "a.jsonl", [{"instruction": "x", "output": "y"}])),
                                       "type": "alpaca"}])
    assert "'alpaca' under rl: dpo is not a preference type" in msg and "chatml.intel" in msg


def test_unknown_loss_types_and_mismatched_weights(tmp_path):
    assert "'sigmod' is not a DPO loss type" in refused(tmp_path, dpo_loss_type=["sigmod"])
    assert "Did you mean 'sigmoid'" in refused(tmp_path, dpo_loss_type=["sigmod"])
    assert "2 weight(s) for 1 dpo_loss_type" in refused(tmp_path, dpo_loss_type=["hinge"], dpo_loss_weights=[1, 2])
    assert "dpo_label_smoothing applies to sigmoid" in refused(tmp_path, dpo_loss_type=["hinge"], dpo_label_smoothing=0.1)


def test_sft_only_keys_and_kto_batch_size(tmp_path):
    assert "sample_packing is for supervised fine-tuning" in refused(tmp_path, sample_packing=True)
    kto = write_jsonl(tmp_path / "kto.jsonl", [{"prompt": "Hi", "completion": "Hello.", "label": True}])
    msg = refused(tmp_path, rl="kto", micro_batch_size=1, datasets=[{"path": str(kto), "type": "passthrough"}])
    assert "rl: kto needs micro_batch_size 2 or more" in msg


def test_other_online_rl_is_not_supported_yet_and_grpo_keys_need_grpo(tmp_path):
    assert "not supported yet: online RL (rl: gdpo)" in refused(tmp_path, rl="gdpo")
    assert "trl.num_generations is a GRPO setting; it applies to rl: grpo, not to rl: dpo" in refused(
        tmp_path, trl={"num_generations": 4})


def test_a_user_defined_preference_type(tmp_path):
    data = write_jsonl(tmp_path / "u.jsonl", [{"q": "Hi", "good": "Hello.", "bad": "Go."}])
    cfg = config(tmp_path, datasets=[{"path": str(data), "type": {"field_prompt": "q", "field_chosen": "good",
                                                                    "field_rejected": "bad",
                                                                    "prompt_format": "Q: {prompt}\nA:"}}])
    assert cfg.data.datasets[0].kind == "user_defined_pairs"
    from tuner.data.formats.preference import UserDefinedPairs

    text = UserDefinedPairs().text({"q": "Hi", "good": "Hello.", "bad": "Go."}, cfg.data.datasets[0], None)
    assert (text.prompt, text.chosen, text.rejected) == ("Q: Hi\nA:", "Hello.", "Go.")
