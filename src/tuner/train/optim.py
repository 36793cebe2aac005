"""Optimizers and learning-rate schedules by name."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from tuner.config.schema import TrainingBlock


def build_optimizer(params: Iterable[torch.nn.Parameter], t: TrainingBlock) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]  # biases and norms: no weight decay
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    fused = t.optimizer == "adamw_torch_fused"
    return torch.optim.AdamW(groups, lr=t.learning_rate, betas=(0.9, 0.999), eps=1e-8, fused=fused)


def warmup_steps(t: TrainingBlock, total_steps: int) -> int:
    """As Axolotl: `warmup_steps`, else `warmup_ratio` of all steps, else 3% of them (at most 100)."""
    if t.warmup_steps is not None:
        return min(t.warmup_steps, total_steps)
    if t.warmup_ratio is not None:
        return int(t.warmup_ratio * total_steps)
    return min(int(0.03 * total_steps), 100)


# tuner's names -> transformers' schedule names (all with linear warmup first).
SCHEDULES = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


def build_scheduler(optimizer: torch.optim.Optimizer, t: TrainingBlock, total_steps: int):
    """transformers' schedules, as the HF Trainer and Axolotl use them."""
    from transformers import get_scheduler

    return get_scheduler(
        SCHEDULES[t.lr_scheduler],
        optimizer,
        num_warmup_steps=warmup_steps(t, total_steps),
        num_training_steps=total_steps,
    )
