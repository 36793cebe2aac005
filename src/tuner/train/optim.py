"""Optimizers and learning-rate schedules by name.

The names are the HF Trainer's (which Axolotl uses), and each is built as the HF Trainer
builds it (transformers' trainer_optimizer.py), with tuner's parameter groups: weight decay
on matrices only, none on biases and norms.

  adamw_torch, adamw_torch_fused          torch.optim.AdamW (fused kernel for the second)
  adamw_bnb_8bit, adamw_8bit,             bitsandbytes AdamW with 8-bit or 32-bit states,
  paged_adamw_8bit, paged_adamw_32bit     paged (CUDA unified memory) where named
  lion_8bit / lion_32bit (+ paged_)       bitsandbytes Lion, betas = (adam_beta1, adam_beta2)
  ademamix, ademamix_8bit (+ paged_)      bitsandbytes AdEMAMix
  rmsprop_bnb, rmsprop_bnb_8bit/_32bit    bitsandbytes RMSprop
  adafactor                               transformers' Adafactor at learning_rate
                                          (scale_parameter and relative_step off)
  sgd, adagrad, rmsprop                   torch.optim
  adamw_torch_8bit, adamw_torch_4bit      (torchao's in the HF Trainer) bitsandbytes' 8-bit AdamW;
                                          config validation reports the substitution

bitsandbytes runs its 8-bit optimizers on CPU too (tests/unit/test_optim.py); paging is a
CUDA feature, so on CPU a paged optimizer keeps its states in ordinary memory (logged once).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

import torch

from tuner.config.schema import TrainingBlock

log = logging.getLogger("tuner")

# name -> (bitsandbytes class, state bits, paged)
BNB = {
    "adamw_bnb_8bit": ("AdamW", 8, False), "adamw_8bit": ("AdamW", 8, False),
    "adamw_torch_8bit": ("AdamW", 8, False), "adamw_torch_4bit": ("AdamW", 8, False),
    "paged_adamw_8bit": ("AdamW", 8, True), "paged_adamw_32bit": ("AdamW", 32, True),
    "lion_8bit": ("Lion", 8, False), "lion_32bit": ("Lion", 32, False),
    "paged_lion_8bit": ("Lion", 8, True), "paged_lion_32bit": ("Lion", 32, True),
    "ademamix": ("AdEMAMix", 32, False), "ademamix_8bit": ("AdEMAMix", 8, False),
    "paged_ademamix_8bit": ("AdEMAMix", 8, True), "paged_ademamix_32bit": ("AdEMAMix", 32, True),
    "rmsprop_bnb": ("RMSprop", 32, False), "rmsprop_bnb_8bit": ("RMSprop", 8, False),
    "rmsprop_bnb_32bit": ("RMSprop", 32, False),
}


def param_groups(params: Iterable[torch.nn.Parameter], weight_decay: float) -> list[dict[str, Any]]:
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]  # biases and norms: no weight decay
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(params: Iterable[torch.nn.Parameter], t: TrainingBlock) -> torch.optim.Optimizer:
    groups = param_groups(params, t.weight_decay)
    lr, betas, eps = t.learning_rate, (t.adam_beta1, t.adam_beta2), t.adam_epsilon
    name = t.optimizer
    if name in ("adamw_torch", "adamw_torch_fused"):
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=name == "adamw_torch_fused")
    if name in BNB:
        return _bitsandbytes(name, groups, t)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(groups, lr=lr, scale_parameter=False, relative_step=False)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr)
    if name == "adagrad":
        return torch.optim.Adagrad(groups, lr=lr)
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr)
    raise ValueError(f"optimizer {name!r} has no builder")  # the schema lists only names built here


def _bitsandbytes(name: str, groups: list[dict[str, Any]], t: TrainingBlock) -> torch.optim.Optimizer:
    import bitsandbytes as bnb

    cls_name, bits, paged = BNB[name]
    betas, eps = (t.adam_beta1, t.adam_beta2), t.adam_epsilon
    kwargs: dict[str, Any] = {"lr": t.learning_rate, "optim_bits": bits}
    if cls_name == "AdamW":
        kwargs.update(betas=betas, eps=eps, is_paged=paged)
    elif cls_name == "Lion":
        kwargs.update(betas=betas, is_paged=paged)
    elif cls_name == "AdEMAMix":
        kwargs.update(betas=(*betas, 0.9999), alpha=5.0, eps=eps, is_paged=paged)
    if paged and not any(p.is_cuda for g in groups for p in g["params"]):
        log.info("optimizer %s: paging needs CUDA; on this device its states stay in ordinary memory", name)
    return getattr(bnb.optim, cls_name)(groups, **kwargs)


def warmup_steps(t: TrainingBlock, total_steps: int) -> int:
    """As Axolotl: `warmup_steps`, else `warmup_ratio` of all steps, else 3% of them (at most 100)."""
    if t.warmup_steps is not None:
        return min(t.warmup_steps, total_steps)
    if t.warmup_ratio is not None:
        return int(t.warmup_ratio * total_steps)
    return min(int(0.03 * total_steps), 100)


# tuner's names -> transformers' schedule names (all with linear warmup first).
SCHEDULES = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup",
             "constant_with_warmup": "constant_with_warmup"}


def build_scheduler(optimizer: torch.optim.Optimizer, t: TrainingBlock, total_steps: int):
    """transformers' schedules, as the HF Trainer and Axolotl use them; with `lr_scheduler: cosine`,
    Axolotl's variants (cosine_factor): quadratic warmup, a floor, a constant tail."""
    from transformers import get_scheduler

    if cosine_variant(t):
        from functools import partial

        warmup = warmup_steps(t, total_steps)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, partial(cosine_factor, t=t, warmup=warmup, total=total_steps))
    return get_scheduler(
        SCHEDULES[t.lr_scheduler],
        optimizer,
        num_warmup_steps=warmup_steps(t, total_steps),
        num_training_steps=total_steps,
    )


def cosine_variant(t: TrainingBlock) -> str | None:
    """Which of Axolotl's cosine schedules the config asks for, chosen as Axolotl chooses (its
    SchedulerMixin): quadratic warmup wins over a floor; a constant tail needs a floor. None:
    transformers' own cosine (or another schedule: these keys act on cosine only)."""
    if t.lr_scheduler != "cosine":
        return None
    if t.lr_quadratic_warmup:
        return "quadratic_warmup"
    if t.cosine_min_lr_ratio and t.cosine_constant_lr_ratio:
        return "min_lr_constant"
    if t.cosine_min_lr_ratio:
        return "min_lr"
    return None


def cosine_factor(step: int, t: TrainingBlock, warmup: int, total: int) -> float:
    """The learning rate at `step` as a fraction of learning_rate, by Axolotl's formulas
    (axolotl/utils/schedulers.py): warmup, then half a cosine wave down to cosine_min_lr_ratio;
    with cosine_constant_lr_ratio the wave ends at that fraction of all steps and the floor holds."""
    variant = cosine_variant(t)
    if step < warmup:
        ramp = step / max(1, warmup)
        return ramp ** 2 if variant == "quadratic_warmup" else ramp
    if variant == "quadratic_warmup":
        progress = (step - warmup) / max(1, total - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    floor = t.cosine_min_lr_ratio or 0.0
    if variant == "min_lr_constant":
        end = int(total * (t.cosine_constant_lr_ratio or 0.0))
        progress = (min(step, end) - warmup) / max(1, end - warmup)
        return max(0.0, (1 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))) + floor
    progress = (step - warmup) / max(1, total - warmup)
    return (1 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)) + floor
