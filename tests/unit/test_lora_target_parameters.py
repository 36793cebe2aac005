"""`lora_target_parameters` (Axolotl's key for peft's target_parameters): LoRA on parameters that
are not nn.Linear, such as the 3-D expert tensors of transformers' MoE layers. Validation rules,
the adapter tuner builds, and `tuner info`'s exact counts on a tiny random Qwen3-MoE."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import make_config, write_jsonl
from tiny_moe import EXPERT_PARAMETERS, EXPERTS, HEAD_DIM, HEADS, HIDDEN, INTER, LAYERS, make_tiny_moe
from tuner.config import ConfigError
from tuner.errors import UserError

R = 4


@pytest.fixture(scope="module")
def moe_dir(tmp_path_factory, smol_tokenizer_dir) -> Path:
    return make_tiny_moe(tmp_path_factory.mktemp("tiny-moe"), smol_tokenizer_dir)


def moe_cfg(tmp_path, base, **extra):
    data = write_jsonl(tmp_path / "data.jsonl", [{"input_ids": list(range(10, 42))} for _ in range(4)])
    values = dict(base_model=str(base), datasets=[{"path": str(data)}], dataset_prepared_path=str(tmp_path / "prepared"),
                  output_dir=str(tmp_path / "out"), sequence_len=32, max_steps=1, learning_rate=1e-3,
                  adapter="lora", lora_r=R, lora_alpha=8, lora_dropout=0, lora_target_parameters=EXPERT_PARAMETERS)
    values.update(extra)
    return make_config(tmp_path, **values)


def test_parameters_alone_are_targets_enough(tmp_path):
    cfg = moe_cfg(tmp_path, tmp_path)
    assert cfg.adapter.lora_target_parameters == EXPERT_PARAMETERS
    assert not any("lora_target_parameters" in n.key for n in cfg.notices)


@pytest.mark.parametrize("extra, key, words", [
    ({"lora_dropout": 0.05}, "lora_dropout", "needs 0"),
    ({"peft_use_dora": True}, "peft_use_dora", "no DoRA"),
])
def test_what_peft_cannot_do_on_a_parameter_is_refused(tmp_path, extra, key, words):
    with pytest.raises(ConfigError) as err:
        moe_cfg(tmp_path, tmp_path, **extra)
    assert any(line.startswith(key) and words in line for line in err.value.lines), err.value.lines


def test_without_adapter_it_is_refused_like_every_lora_key(tmp_path):
    with pytest.raises(ConfigError, match="lora_target_parameters .*is set but there is no adapter"):
        make_config(tmp_path, base_model=str(tmp_path), datasets=[{"path": "x.jsonl"}], max_steps=1,
                    learning_rate=1e-3, lora_target_parameters=EXPERT_PARAMETERS)


def test_info_counts_lora_on_expert_parameters_exactly(tmp_path, moe_dir):
    from tuner.plan import count_parameters, describe_model

    cfg = moe_cfg(tmp_path, moe_dir, lora_target_modules=["q_proj"])
    facts = count_parameters(cfg, describe_model(cfg))
    # peft's ParamWrapper on an (experts, d_in, d_out) tensor: A is (r * experts, d_in), B is (d_out, r * experts).
    gate_up = R * EXPERTS * (HIDDEN + 2 * INTER)  # gate_up_proj: (experts, 2 * moe_intermediate, hidden)
    down = R * EXPERTS * (HIDDEN + INTER)  # down_proj: (experts, hidden, moe_intermediate)
    q_proj = R * (HIDDEN + HEADS * HEAD_DIM)  # hidden -> heads * head_dim
    assert facts.trainable == facts.adapter_params == LAYERS * (gate_up + down + q_proj)
    assert facts.total == facts.base_total + facts.trainable
    assert facts.target_count == 3 * LAYERS
    assert set(facts.targets) == {"mlp.experts.gate_up_proj (x2)", "mlp.experts.down_proj (x2)", "self_attn.q_proj (x2)"}
    # the memory plan's layer walk sees the one linear LoRA, not the wrapped experts
    assert [lin.name for lin in facts.layers[0].linears if lin.lora_r] == ["q_proj"]


def test_a_parameter_name_that_matches_nothing_names_the_key(tmp_path, moe_dir):
    from transformers import AutoModelForCausalLM

    from tuner.models.adapter import apply_adapter

    cfg = moe_cfg(tmp_path, moe_dir, lora_target_parameters=["mlp.experts.w1"])
    model = AutoModelForCausalLM.from_pretrained(moe_dir)
    with pytest.raises(UserError, match=r"lora_target_parameters: \['mlp.experts.w1'\] match no parameter.*"
                                        r"model.layers.N.mlp.experts.gate_up_proj"):
        apply_adapter(model, cfg.adapter, gradient_checkpointing=False)
