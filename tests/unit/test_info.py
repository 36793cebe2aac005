"""`tuner info`: sizes, safetensors headers, exact parameter counts on the meta device, the
activation formula against what autograd really saves, and the report (tiny models only)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from helpers import make_config, write_jsonl
from tuner.errors import UserError
from tuner.plan import (
    GiB,
    count_parameters,
    describe_model,
    fit_line,
    info_report,
    parse_size,
    plan_memory,
    read_stored_weights,
    resolve_precision,
)

LAYERS = 3


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, smol_tokenizer_dir) -> Path:
    """A 3-layer random Llama (GQA: 4 heads, 2 KV heads; tied embeddings) with the SmolLM2 tokenizer."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    out = tmp_path_factory.mktemp("tiny-llama")
    config = LlamaConfig(
        vocab_size=49152, hidden_size=64, intermediate_size=160, num_hidden_layers=LAYERS, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(out)
    for f in Path(smol_tokenizer_dir).iterdir():
        shutil.copy(f, out / f.name)
    return out


def tiny_cfg(tmp_path, base, **extra):
    data = write_jsonl(tmp_path / "data.jsonl", [{"input_ids": list(range(10, 42))} for _ in range(8)])
    values = dict(base_model=str(base), datasets=[{"path": str(data)}], dataset_prepared_path=str(tmp_path / "prepared"),
                  output_dir=str(tmp_path / "out"), sequence_len=32, micro_batch_size=2, max_steps=1,
                  learning_rate=1e-3, sample_packing=True)
    values.update(extra)
    return make_config(tmp_path, **values)


# --------------------------------------------------------------------------- sizes and headers


def test_parse_size():
    assert parse_size("24GiB") == 24 * GiB == parse_size("24G") == parse_size("24 gib")
    assert parse_size("80GB") == 80 * 10**9
    assert parse_size("1.5TiB") == int(1.5 * 2**40)
    assert parse_size("512") == 512
    for bad in ("lots", "24 parsecs", "-1G", "0"):
        with pytest.raises(UserError, match="--device-memory"):
            parse_size(bad)


def test_safetensors_headers_are_read_without_the_data(tmp_path):
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(3, 4, dtype=torch.bfloat16), "b": torch.zeros(5)}, str(tmp_path / "model-1.safetensors"))
    save_file({"c": torch.zeros(2, 2, dtype=torch.float16)}, str(tmp_path / "model-2.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-1.safetensors", "b": "model-1.safetensors", "c": "model-2.safetensors"}}))
    stored = read_stored_weights(tmp_path)
    assert stored.tensors == 3 and stored.parameters == 12 + 5 + 4
    assert stored.by_dtype == {"bfloat16": (12, 24), "float32": (5, 20), "float16": (4, 8)}
    assert stored.main_dtype == "bfloat16"
    # A truncated file: the header is all that is needed.
    data = (tmp_path / "model-2.safetensors").read_bytes()
    (tmp_path / "model-2.safetensors").write_bytes(data[:-4])
    assert read_stored_weights(tmp_path).parameters == 21
    (tmp_path / "model-1.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(UserError, match="not a safetensors file"):
        read_stored_weights(tmp_path)


# --------------------------------------------------------------------------- parameters


ADAPTERS = {
    "full": {},
    "unfrozen": {"unfrozen_parameters": [r"layers\.2\.mlp\."]},
    "lora": {"adapter": "lora", "lora_target_linear": True, "lora_r": 4},
    "dora-qv": {"adapter": "lora", "lora_target_modules": ["q_proj", "v_proj"], "peft_use_dora": True},
    "saved-modules": {"adapter": "lora", "lora_target_linear": True, "lora_modules_to_save": ["embed_tokens", "lm_head"]},
    "tokens": {"adapter": "lora", "lora_target_modules": r".*layers\.0\..*proj", "peft_trainable_token_indices": [5, 6]},
    "added-tokens": {"tokens": ["<extra_a>", "<extra_b>"], "adapter": "lora", "lora_target_modules": ["q_proj"],
                     "peft_trainable_token_indices": [49152, 49153]},
}


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_meta_counts_equal_the_loaded_model(tmp_path, tiny_dir, name):
    from tuner.models.adapter import apply_adapter
    from tuner.models.load import load_model

    cfg = tiny_cfg(tmp_path, tiny_dir, **ADAPTERS[name])
    facts = describe_model(cfg)
    counted = count_parameters(cfg, facts)
    real = apply_adapter(load_model(cfg.model, facts.base, facts.tokenizer, torch.float32), cfg.adapter, False)
    assert counted.trainable == sum(p.numel() for p in real.parameters() if p.requires_grad)
    assert counted.total == sum(p.numel() for p in real.parameters())
    # tied: the head is stored once; added tokens add embedding rows
    assert counted.base_total == facts.stored.parameters + 64 * len(facts.new_token_ids)
    if name == "lora":
        assert counted.target_count == 7 * LAYERS and "self_attn.q_proj (x3)" in counted.targets
    if name == "unfrozen":
        assert [layer.active for layer in counted.layers] == [False, False, True]
    if name == "added-tokens":
        assert counted.vocab == 49154 and facts.new_token_ids == [49152, 49153]


def test_qlora_counts_as_lora_with_4bit_weight_bytes(tmp_path, tiny_dir):
    lora = tiny_cfg(tmp_path, tiny_dir, adapter="lora", lora_target_linear=True, bf16=True)
    qlora = tiny_cfg(tmp_path, tiny_dir, adapter="qlora", load_in_4bit=True, lora_target_linear=True, bf16=True)
    facts = describe_model(lora)
    p_lora, p_qlora = count_parameters(lora, facts), count_parameters(qlora, facts)
    assert p_lora.trainable == p_qlora.trainable and p_lora.total == p_qlora.total
    plan_lora, plan_qlora = plan_memory(lora, p_lora, "bf16"), plan_memory(qlora, p_qlora, "bf16")
    linear = p_qlora.linear_weights
    assert linear == LAYERS * (2 * 64 * 64 + 2 * 32 * 64 + 3 * 64 * 160)  # q, o; k, v; gate, up, down
    # 4-bit linears (+ scales), everything else fp32 (peft's k-bit preparation), adapter fp32
    other = p_qlora.base_total - linear
    expected = linear / 2 + linear / 64 + linear / (64 * 256) * 4 + 4 * other + 4 * p_qlora.adapter_params
    assert plan_qlora.weights == pytest.approx(expected, abs=2)
    assert plan_lora.weights == 2 * p_lora.base_total + 4 * p_lora.adapter_params


@pytest.mark.parametrize("bf16, mapped", [(False, True), (True, False)])
def test_a_kbit_load_keeps_the_file_mapped_only_in_its_stored_dtype(tmp_path, tiny_dir, bf16, mapped):
    """The tiny checkpoint is fp32. Loaded in 4 bit in fp32, the unquantized weights view the file, so the
    pages of the quantized ones stay resident (their stored size); in bf16 every tensor is a cast copy."""
    from tuner.plan.memory import mapped_source_bytes

    cfg = tiny_cfg(tmp_path, tiny_dir, adapter="qlora", load_in_4bit=True, lora_target_linear=True, bf16=bf16)
    facts = describe_model(cfg)
    assert facts.stored is not None and facts.stored.main_dtype == "float32"
    p = count_parameters(cfg, facts)
    assert mapped_source_bytes(cfg, facts, p) == (4 * p.linear_weights if mapped else 0)
    lora = tiny_cfg(tmp_path, tiny_dir, adapter="lora", lora_target_linear=True, bf16=False)
    assert mapped_source_bytes(lora, facts, count_parameters(lora, facts)) == 0  # not quantized: no second copy


# --------------------------------------------------------------------------- activations


def saved_by_autograd(cfg, facts, precision, B, S):
    """Bytes autograd saves per decoder layer and outside them in one forward of tuner's loss
    (the model as the training loop builds it), counted once per storage; parameters excluded,
    autocast's weight copies included."""
    from tuner.models.adapter import apply_adapter
    from tuner.models.load import decoder_layers
    from tuner.models.load import bnb_config, load_model
    from tuner.train.loss import CausalLMLoss

    compute = {"bf16": torch.bfloat16, "no": torch.float32}[precision]
    model = load_model(cfg.model, facts.base, facts.tokenizer, compute if cfg.adapter.adapter else torch.float32,
                       quantization=bnb_config(cfg.adapter, compute))
    model.config.use_cache = False
    model = apply_adapter(model, cfg.adapter, False)
    loss = CausalLMLoss(model).train()
    layers = decoder_layers(model)
    current: list[int | None] = [None]
    for index, layer in enumerate(layers):
        layer.register_forward_pre_hook(lambda m, a, i=index: current.__setitem__(0, i))
        layer.register_forward_hook(lambda m, a, o: current.__setitem__(0, None))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, tuple[int | None, int]] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params and ptr not in seen:
            seen[ptr] = (current[0], t.untyped_storage().nbytes())
        return t

    torch.manual_seed(0)
    ids = torch.randint(3, 40000, (B, S))
    positions = torch.cat([torch.arange(S // 2), torch.arange(S - S // 2)]).repeat(B, 1)  # two documents per row
    labels = ids.clone()
    labels[positions == 0] = -100
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision != "no"):
        loss(input_ids=ids, labels=labels, position_ids=positions)
    per_layer = [sum(n for where, n in seen.values() if where == i) for i in range(len(layers))]
    outside = sum(n for where, n in seen.values() if where is None)
    return per_layer, outside


REGIMES = {
    "full-bf16": dict(bf16=True),
    "full-fp32": dict(),
    "full-eager": dict(bf16=True, attn_implementation="eager"),
    "unfrozen-bf16": dict(bf16=True, unfrozen_parameters=[r"layers\.1\."]),
    "lora-bf16": dict(bf16=True, adapter="lora", lora_target_linear=True),
    "lora-fp32": dict(adapter="lora", lora_target_linear=True),
    "lora-qv-dropout": dict(bf16=True, adapter="lora", lora_target_modules=["q_proj", "v_proj"], lora_dropout=0.1),
    "qlora": dict(bf16=True, adapter="qlora", load_in_4bit=True, lora_target_linear=True),
}


@pytest.mark.parametrize("name", list(REGIMES))
def test_activation_formula_equals_what_autograd_saves(tmp_path, tiny_dir, name):
    B, S = 2, 32
    cfg = tiny_cfg(tmp_path, tiny_dir, micro_batch_size=B, sequence_len=S, **REGIMES[name])
    facts = describe_model(cfg)
    params = count_parameters(cfg, facts)
    precision = resolve_precision(cfg)[0]
    plan = plan_memory(cfg, params, precision)
    measured, outside = saved_by_autograd(cfg, facts, precision, B, S)
    planned = [s + c for s, c in zip(plan.layer_saved, plan.layer_copies)]
    # The first layer that saves anything also holds the rotary tables all layers share (the
    # plan counts them outside the layers): the layers after it must match to the byte.
    first = next(i for i, x in enumerate(planned) if x)
    assert measured[:first] == planned[:first] and measured[first + 1:] == planned[first + 1:], (measured, planned)
    assert sum(measured) + outside == pytest.approx(sum(planned) + plan.outside_saved, rel=0.05), (measured, planned, outside, plan.outside_saved)


# --------------------------------------------------------------------------- the plan


def test_plan_phases(tmp_path, tiny_dir):
    facts = describe_model(tiny_cfg(tmp_path, tiny_dir))

    def plan(**extra):
        cfg = tiny_cfg(tmp_path, tiny_dir, **extra)
        return plan_memory(cfg, count_parameters(cfg, facts), "bf16")

    base, gc = plan(), plan(gradient_checkpointing=True)
    assert gc.activations < base.activations and gc.step < base.step
    assert base.gradients == 4 * base.optimizer // 8 and base.weights == 4 * count_parameters(
        tiny_cfg(tmp_path, tiny_dir), facts).total
    # Gradients stay alive through later micro-batches under accumulation.
    accumulated = plan(gradient_accumulation_steps=4)
    assert accumulated.phases["backward start"] == base.phases["backward start"] + base.gradients
    # The loss runs on chunks of the loss's own size (tuner.train.loss.chunk_positions): 12 B per logit in backward.
    from tuner.train.loss import chunk_positions

    big = plan(micro_batch_size=16, sequence_len=256)
    assert big.chunk == chunk_positions(49152) == 455 and big.loss == 12 * 49152 * 455
    lora = plan(adapter="lora", lora_target_linear=True)
    assert lora.optimizer < base.optimizer / 10 and lora.weight_copies < base.weight_copies
    assert "fits" in fit_line(lora, lora_cfg := tiny_cfg(tmp_path, tiny_dir), 64 * GiB, "test")
    assert "does NOT fit" in fit_line(base, lora_cfg, 1 << 20, "test")


# --------------------------------------------------------------------------- the report


def test_report_sections_and_prepared_data(tmp_path, tiny_dir):
    from tuner.data.pipeline import prepare

    cfg = tiny_cfg(tmp_path, tiny_dir, adapter="lora", lora_target_linear=True, val_set_size=2)
    text = info_report(cfg, device_memory="16GiB")
    for expected in ("LlamaForCausalLM: AutoModelForCausalLM -> model_type 'llama' in config.json",
                     "layers 3, hidden size 64", "KV heads 2", "tied input/output embeddings: yes",
                     "stored weights   float32", "LoRA, r=8, alpha=16", "trainable", "memory plan",
                     "fits:", "--device-memory 16GiB", "not prepared yet"):
        assert expected in text, (expected, text)
    facts = describe_model(cfg)
    prepare(cfg, facts.tokenizer, facts.tokenizer_files)
    text = info_report(cfg, device_memory="1MiB")
    assert "does NOT fit" in text
    assert "8 prepared; 6 train, 2 held out" in text, text
    assert "3 per epoch" in text  # 6 rows of 32 tokens: one per packed row, micro_batch_size 2


def test_cli_info(tmp_path, tiny_dir, capsys):
    from helpers import write_config
    from tuner.cli import main

    config = write_config(tmp_path / "c.yml", base_model=str(tiny_dir), datasets=[{"path": "x.jsonl"}],
                          learning_rate=1e-3, num_epochs=1)
    assert main(["info", str(config), "--device-memory", "a lot"]) == 2
    assert "--device-memory" in capsys.readouterr().err
    assert main(["info", str(config)]) == 0
    out = capsys.readouterr().out
    assert "memory plan" in out and "cannot check the prepared data" in out  # x.jsonl does not exist
