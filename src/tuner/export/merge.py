"""`tuner merge-lora`: fold a trained adapter into its base weights, as a standard HF folder.

The adapter is merged into the *unquantized* base (for QLoRA: the original base folder,
not the 4-bit copy training ran on). The merged model therefore differs slightly from the
4-bit model plus adapter that training optimised: by the 4-bit quantization error of the
base weights, which the adapter partly learned to compensate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuner.errors import UserError
from tuner.fsutil import atomic_folder

DTYPES = ("float32", "bfloat16", "float16")


def merge(adapter_dir: Path, output: Path, dtype: str | None = None) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuner.models import heads
    from tuner.models.adapter import peft_calls

    config_path = adapter_dir / "adapter_config.json"
    if not config_path.is_file():
        raise UserError(f"--lora-model-dir: {adapter_dir} holds no adapter (no adapter_config.json); train with an adapter first")
    base_path = Path(json.loads(config_path.read_text())["base_model_name_or_path"])
    if not (base_path / "config.json").is_file():
        raise UserError(f"the adapter's base model {base_path} is not there any more (it is where tuner trained from)")
    stored = json.loads((base_path / "config.json").read_text())
    name = dtype or stored.get("dtype") or stored.get("torch_dtype") or "float32"
    if name not in DTYPES:
        raise UserError(f"--dtype: {name!r} is not one of {', '.join(DTYPES)}")
    tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
    if (adapter_dir / heads.HEAD_CONFIG).is_file():  # a reward model or classifier: its base + head, labels
        merged: Any = heads.load_trained(adapter_dir, torch.float32)[0].merge_and_unload()
    else:
        base = AutoModelForCausalLM.from_pretrained(str(base_path), dtype=torch.float32)
        if len(tokenizer) > base.get_input_embeddings().weight.shape[0]:
            base.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with peft_calls(quantized=False):  # merged into a plain base
            from peft import PeftModel

            merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged = merged.to(getattr(torch, name))
    with atomic_folder(output) as tmp:
        merged.save_pretrained(tmp)  # safetensors
        tokenizer.save_pretrained(tmp)  # with the chat template that trained the adapter
    return output
