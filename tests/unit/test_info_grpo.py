"""`tuner info` for rl: grpo (a tiny random Llama, no weights loaded): the step's prompts,
completions and lengths, generation's KV cache, the training forward over completions of max
length, and the reference, each against its formula."""

from __future__ import annotations

import re

import pytest
from helpers import make_config, make_tiny_model, write_jsonl

from tuner.plan import count_parameters, describe_model, info_report, plan_memory
from tuner.plan.facts import fmt_bytes
from tuner.plan.memory import grpo_plan

P, C, B, GAS, G = 48, 24, 4, 3, 4  # sequence_len, max_completion_length, micro_batch_size, accumulation, generations


@pytest.fixture(scope="module")
def base(tmp_path_factory, smol_tokenizer_dir):
    return make_tiny_model(tmp_path_factory.mktemp("tiny-info-grpo") / "base", "llama", smol_tokenizer_dir)


def grpo_cfg(tmp_path, base, **extra):
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"Count to {i}:"} for i in range(6)])
    (tmp_path / "rw.py").write_text("def f(prompts, completions, **kw):\n    return [0.0] * len(completions)\n")
    trl = {"num_generations": G, "max_completion_length": C, "reward_funcs": ["rw.f"], **extra.pop("trl", {})}
    values = dict(base_model=str(base), rl="grpo", datasets=[{"path": str(data)}], sequence_len=P,
                  dataset_prepared_path=str(tmp_path / "prepared"), output_dir=str(tmp_path / "out"),
                  micro_batch_size=B, gradient_accumulation_steps=GAS, max_steps=1, learning_rate=1e-3, bf16=False,
                  adapter="lora", lora_r=4, lora_alpha=8, lora_target_linear=True, trl=trl)
    values.update(extra)
    return make_config(tmp_path, **values)


def test_grpo_plan_follows_its_formulas(tmp_path, base):
    cfg = grpo_cfg(tmp_path, base)
    facts = describe_model(cfg)
    p = count_parameters(cfg, facts)
    g = grpo_plan(cfg, p, "no")
    completions = B * GAS
    assert (g.prompts, g.completions, g.max_completion_length, g.prompt_len) == (completions // G, completions, C, P)
    # layers x (k, v) x kv_heads x head_dim x (prompt + completion) x completions x fp32
    assert g.kv_cache == 2 * 2 * 2 * 16 * (P + C) * completions * 4
    assert g.reference_bytes == 0 and g.reference.startswith("none (beta 0")
    # the training forward: micro_batch_size completions of prompt + max_completion_length tokens
    assert g.train.tokens == B * (P + C)
    sft = plan_memory(cfg.model_copy(update={"data": cfg.data.model_copy(update={"sequence_len": P + C})}), p, "no")
    assert g.train.layer_saved == sft.layer_saved and g.train.layer_kept == sft.layer_kept
    # its loss: the full logits of the last max_completion_length + 1 positions (fp32: (12 + 4) B per logit)
    assert g.train.loss == 16 * p.vocab * B * (C + 1)
    assert g.generation_total == 512 * 2**20 + g.train.weights + g.train.optimizer + g.kv_cache + 48 * 2**20
    assert g.total == max(g.generation_total, g.train.total)

    text = info_report(cfg, "8GiB")
    assert (f"GRPO step (per process): {completions // G} prompt(s) x num_generations {G} = {completions} completions"
            in text)
    assert f"{fmt_bytes(g.kv_cache):>11}  KV cache: 2 layers x 2 x 2 KV heads x 16 head dim x ({P} + {C}) tokens x " \
           f"{completions} completions x 4 B" in text
    assert f"micro_batch_size {B} completions x ({P} prompt + {C} completion tokens) = {B * (P + C):,} token slots" in text
    assert f"full logits of {B} x (max_completion_length {C} + 1) = {B * (C + 1):,} positions" in text
    assert re.search(rf"\n  total +{re.escape(fmt_bytes(g.total))}  the larger of the two", text)
    assert "none (beta 0" in text


def test_grpo_reference(tmp_path, base):
    cfg = grpo_cfg(tmp_path, base, trl={"beta": 0.04})
    p = count_parameters(cfg, describe_model(cfg))
    g = grpo_plan(cfg, p, "no")
    logits = (4 + 8) * p.vocab * B * (C + 1)
    assert g.reference_bytes == 0 and "adapter disabled" in g.reference and fmt_bytes(logits) in g.reference
    beta0 = grpo_plan(grpo_cfg(tmp_path, base), p, "no")
    assert g.train.phases["end of forward"] == beta0.train.phases["end of forward"] + logits

    full = grpo_cfg(tmp_path, base, trl={"beta": 0.04}, adapter=None)
    pf = count_parameters(full, describe_model(full))
    gf = grpo_plan(full, pf, "no")
    assert gf.reference_bytes == 4 * pf.total and "frozen copy" in gf.reference
    assert gf.total == max(gf.generation_total, gf.train.total + gf.reference_bytes)
    assert "  reference " in info_report(full, "8GiB")


def test_reward_models_count_their_weights(tmp_path, base):
    import json

    import torch
    from safetensors.torch import save_file

    rm = tmp_path / "rm"
    rm.mkdir()
    (rm / "config.json").write_text(json.dumps({"architectures": ["LlamaForSequenceClassification"], "num_labels": 1}))
    save_file({"w": torch.zeros(10, 30), "b": torch.zeros(7)}, str(rm / "model.safetensors"))
    lora = tmp_path / "lora_rm"  # tuner's LoRA reward model: the base's weights, the adapter merged into them
    lora.mkdir()
    (lora / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    (lora / "head_config.json").write_text(json.dumps({"num_labels": 1}))
    cfg = grpo_cfg(tmp_path, base, trl={"reward_funcs": ["rw.f", "./rm"], "reward_model_path": "lora_rm"})
    p = count_parameters(cfg, describe_model(cfg))
    g = grpo_plan(cfg, p, "no")
    assert g.reward_model_bytes == 4 * (307 + p.base_total)  # fp32: 4 B per parameter
    assert g.reward_models == f"rm 307 parameters; lora_rm {p.base_total:,} parameters"
    assert g.total == max(g.generation_total, g.train.total + g.reward_model_bytes)
    assert g.generation_total == grpo_plan(grpo_cfg(tmp_path, base), p, "no").generation_total + g.reward_model_bytes
    assert f"reward models  {fmt_bytes(g.reward_model_bytes):>11}  rm 307 parameters" in info_report(cfg, "8GiB")


@pytest.mark.parametrize("iterations, per_epoch", [(1, 3), (2, 6)])
def test_grpo_steps_per_epoch_count_num_iterations(tmp_path, base, iterations, per_epoch):
    """6 prompts, 2 a step (4 x 2 completions / 4 generations): 3 steps an epoch; each rollout trained
    num_iterations times: that many times the steps."""
    from tuner.data.pipeline import prepare

    cfg = grpo_cfg(tmp_path, base, micro_batch_size=4, gradient_accumulation_steps=2, max_steps=None, num_epochs=1,
                   trl={"num_iterations": iterations})
    facts = describe_model(cfg)
    prepare(cfg, facts.tokenizer, facts.tokenizer_files)
    text = info_report(cfg, "8GiB")
    again = " x num_iterations 2" if iterations == 2 else ""
    assert f"steps        {per_epoch} per epoch (6 prompts / 2 prompts per step{again}, one process); {per_epoch} in " \
           "this run" in text, text
