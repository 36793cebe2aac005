"""LoRA adapters through peft's public API."""

from __future__ import annotations

from typing import Any

from tuner.config.schema import AdapterBlock
from tuner.errors import UserError


def lora_config(a: AdapterBlock) -> Any:
    from peft import LoraConfig

    if a.lora_target_linear:
        # peft's own "all linear layers except the output head".
        targets: Any = "all-linear" if not a.lora_target_modules else a.lora_target_modules
    else:
        targets = a.lora_target_modules
    return LoraConfig(
        r=a.lora_r,
        lora_alpha=a.lora_alpha,
        lora_dropout=a.lora_dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )


def apply_lora(model: Any, a: AdapterBlock) -> Any:
    """Wrap `model` with fresh LoRA weights; only those train."""
    from peft import get_peft_model

    config = lora_config(a)
    if a.lora_target_linear and a.lora_target_modules:
        # Both given: the union of all linear layers and the named ones.
        names = [a.lora_target_modules] if isinstance(a.lora_target_modules, str) else list(a.lora_target_modules)
        config.target_modules = sorted(set(_linear_names(model)) | set(names))
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        present = ", ".join(sorted(_linear_names(model)))
        raise UserError(
            f"lora_target_modules: {a.lora_target_modules!r} matches no module of this model "
            f"({str(err).splitlines()[0][:200]}). Linear layers here: {present}"
        ) from None


def _linear_names(model: Any) -> set[str]:
    import torch

    head = model.get_output_embeddings()
    return {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not head
    }
