"""Tiny random models of four families train end to end, and what they save reloads exactly."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from helpers import TINY_FAMILIES, alpaca_rows, make_config, make_tiny_model, write_config, write_jsonl
from tuner.train.loop import train


def config_values(tmp_path, base, **extra):
    data = write_jsonl(tmp_path / "data.jsonl", alpaca_rows(24))
    values = dict(
        base_model=str(base),
        datasets=[{"path": str(data), "type": "alpaca"}],
        dataset_prepared_path=str(tmp_path / "prepared"),
        output_dir=str(tmp_path / "out"),
        sequence_len=128,
        micro_batch_size=4,
        gradient_accumulation_steps=1,
        max_steps=16,
        learning_rate=3e-3,
        lr_scheduler="constant",
        optimizer="adamw_torch",
        logging_steps=1,
    )
    values.update(extra)
    return values


def probe_batch(tokenizer):
    enc = tokenizer(["### Instruction:\nAdd the numbers.", "Repeat the word blue"], return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


def logits(model, ids, mask):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_full_finetune_loss_falls_and_output_reloads(tmp_path, smol_tokenizer_dir, family):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = make_tiny_model(tmp_path / "base", family, smol_tokenizer_dir)
    result = train(make_config(tmp_path, **config_values(tmp_path, base)))

    first, last = sum(result.losses[:3]) / 3, sum(result.losses[-3:]) / 3
    assert last < 0.7 * first, result.losses

    out = result.output_dir
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids, mask = probe_batch(tokenizer)
    assert torch.equal(logits(result.model, ids, mask), logits(reloaded, ids, mask))

    record = json.loads((out / "tuner_run.json").read_text())
    assert record["steps"] == 16 and record["data_fingerprint"] and record["versions"]["transformers"]
    metrics = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == list(range(1, 17))
    assert [m for m in metrics if "loss" in m][-1]["loss"] == pytest.approx(result.losses[-1])
    assert (out / "tuner_config.yml").is_file()


def test_lora_adapter_reloads_with_identical_logits(tmp_path, smol_tokenizer_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = make_tiny_model(tmp_path / "base", "llama", smol_tokenizer_dir)
    values = config_values(tmp_path, base, adapter="lora", lora_r=8, lora_alpha=16, lora_target_linear=True,
                           max_steps=12, learning_rate=1e-2)
    result = train(make_config(tmp_path, **values))
    assert result.losses[-1] < result.losses[0]
    out = result.output_dir
    adapter_cfg = json.loads((out / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == str(base.resolve())
    assert {m.rsplit(".", 1)[-1] for m in adapter_cfg["target_modules"]} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out)
    ids, mask = probe_batch(AutoTokenizer.from_pretrained(out))
    assert torch.equal(logits(result.model, ids, mask), logits(reloaded, ids, mask))
    # The base weights themselves did not change.
    assert not (out / "model.safetensors").exists()


def test_bf16_gradient_checkpointing_accumulation(tmp_path, smol_tokenizer_dir):
    base = make_tiny_model(tmp_path / "base", "llama", smol_tokenizer_dir)
    values = config_values(tmp_path, base, bf16=True, gradient_checkpointing=True, micro_batch_size=2,
                           gradient_accumulation_steps=2, max_steps=8, lr_scheduler="cosine", warmup_steps=2)
    result = train(make_config(tmp_path, **values))
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert result.losses[-1] < result.losses[0]
    metrics = [json.loads(l) for l in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "loss" in m]
    assert steps[0]["learning_rate"] == 0.0  # transformers' warmup starts at 0
    assert steps[2]["learning_rate"] == pytest.approx(3e-3)


def test_cli_preprocess_then_train(tmp_path, smol_tokenizer_dir):
    base = make_tiny_model(tmp_path / "base", "qwen2", smol_tokenizer_dir)
    cfg = write_config(tmp_path / "config.yml", **config_values(tmp_path, base, max_steps=3))
    run = lambda *a: subprocess.run([sys.executable, "-m", "tuner", *a], capture_output=True, text=True, cwd=tmp_path)
    pre = run("preprocess", str(cfg))
    assert pre.returncode == 0, pre.stderr
    assert "(new)" in pre.stdout and "24 rows read, 24 kept" in pre.stdout
    res = run("train", str(cfg), "--max_steps", "2")
    assert res.returncode == 0, res.stderr
    assert "(reused)" in res.stderr and "Traceback" not in res.stderr
    assert (tmp_path / "out" / "model.safetensors").is_file()
    # A bad override is a user error: exit code 2, no traceback.
    bad = run("train", str(cfg), "--micro_batch_size", "0")
    assert bad.returncode == 2 and "micro_batch_size (command line)" in bad.stderr and "Traceback" not in bad.stderr


def test_sample_packing_trains_and_evaluates_packed(tmp_path, smol_tokenizer_dir):
    base = make_tiny_model(tmp_path / "base", "mistral", smol_tokenizer_dir)
    values = config_values(tmp_path, base, sample_packing=True, val_set_size=4, max_steps=10, micro_batch_size=2)
    cfg = write_config(tmp_path / "packed.yml", **values)
    res = subprocess.run([sys.executable, "-m", "tuner", "train", str(cfg)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "sample packing: 20 rows in " in res.stderr and "packing efficiency" in res.stderr
    metrics = [json.loads(l) for l in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert len(losses) == 10 and losses[-1] < losses[0]
    assert any("eval_loss" in m for m in metrics)
    inspect = subprocess.run([sys.executable, "-m", "tuner", "inspect", str(cfg), "--rows", "0"], capture_output=True, text=True)
    assert "sample packing: 20 rows in" in inspect.stdout
