"""Axolotl keys whose effect lives in the training loop are honoured, not just accepted:
saves_per_epoch / evals_per_epoch, gradient_checkpointing_kwargs, unfrozen_parameters with
an adapter (as Axolotl: the adapted model's parameters matching no pattern are frozen)."""

from __future__ import annotations

import json

import torch

from helpers import alpaca_rows, load_weights, make_config, make_tiny_model, write_jsonl
from tuner.train.loop import train


def values(tmp_path, base, **extra):
    data = write_jsonl(tmp_path / "data.jsonl", alpaca_rows(16))
    out = dict(
        base_model=str(base), datasets=[{"path": str(data), "type": "alpaca"}],
        dataset_prepared_path=str(tmp_path / "prepared"), output_dir=str(tmp_path / "out"),
        sequence_len=128, micro_batch_size=2, num_epochs=1, learning_rate=1e-2, lr_scheduler="constant",
        optimizer="adamw_torch", adapter="lora", lora_r=4, lora_alpha=8, lora_target_linear=True,
    )
    out.update(extra)
    return out


def test_cadences_per_epoch(tmp_path, smol_tokenizer_dir):
    base = make_tiny_model(tmp_path / "base", "llama", smol_tokenizer_dir)
    # 14 train rows / micro-batch 2 = 7 steps per epoch; 3 saves and 2 evals per epoch
    train(make_config(tmp_path, **values(tmp_path, base, val_set_size=2, saves_per_epoch=3, evals_per_epoch=2)))
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    saved = [r["step"] for r in records if r.get("event") == "checkpoint"]
    evaluated = [r["step"] for r in records if "eval_loss" in r]
    assert saved == [3, 6]  # every ceil(7 / 3) = 3 steps, none after the last step
    assert evaluated == [4, 7]  # every ceil(7 / 2) = 4 steps, and at the end
    assert all(r["save_seconds"] > 0 for r in records if r.get("event") == "checkpoint")


def test_reentrant_checkpointing_still_trains_every_adapted_layer(tmp_path, smol_tokenizer_dir):
    base = make_tiny_model(tmp_path / "base", "llama", smol_tokenizer_dir)
    result = train(make_config(tmp_path, **values(
        tmp_path, base, max_steps=2, gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": True})))
    lora_b = {n: p for n, p in result.model.named_parameters() if "lora_B" in n}
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b.values()), "a layer's LoRA got no gradient"


def test_unfrozen_parameters_with_an_adapter_train_only_what_matches(tmp_path, smol_tokenizer_dir):
    base = make_tiny_model(tmp_path / "base", "llama", smol_tokenizer_dir)
    result = train(make_config(tmp_path, **values(tmp_path, base, max_steps=2, unfrozen_parameters=[r"layers\.0\..*lora_"])))
    trained = {n for n, p in result.model.named_parameters() if p.requires_grad}
    assert trained and all("layers.0." in n and "lora_" in n for n in trained)
    saved = load_weights(tmp_path / "out" / "adapter_model.safetensors")
    layer1 = [k for k in saved if "layers.1." in k and "lora_B" in k]
    assert layer1 and all(torch.count_nonzero(saved[k]) == 0 for k in layer1)  # frozen: still peft's zero init


def test_unfrozen_base_parameters_an_adapter_would_not_save_are_refused(tmp_path, smol_tokenizer_dir):
    import pytest

    from tuner.errors import UserError

    base = make_tiny_model(tmp_path / "base", "llama", smol_tokenizer_dir)
    with pytest.raises(UserError, match="lora_modules_to_save"):
        train(make_config(tmp_path, **values(tmp_path, base, max_steps=1, unfrozen_parameters=["lora_", "embed_tokens"])))
