"""The causal-LM loss, computed by tuner.

The logits at position t predict the label at t+1; labels of -100 are ignored. The loss
functions return a *sum* over trained tokens and the number of those tokens: the loop
divides by the trained tokens of the whole optimizer step (all micro-batches, all
processes), never by a per-batch mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tuner.data.tokenize import IGNORE


def trained_token_count(labels: torch.Tensor) -> int:
    """Tokens whose loss counts: labels after the shift that are not -100."""
    return int((labels[:, 1:] != IGNORE).sum())


def shifted_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of token cross-entropies, in fp32, over positions whose next label is trained."""
    shift_logits = logits[:, :-1, :].reshape(-1, logits.shape[-1])
    shift_labels = labels[:, 1:].reshape(-1)
    return F.cross_entropy(shift_logits.float(), shift_labels, ignore_index=IGNORE, reduction="sum")


def batch_loss_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Run the model on a batch and return the summed loss of its trained tokens."""
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        use_cache=False,  # a cache object would make transformers ignore packed position_ids
    )
    return shifted_loss_sum(out.logits, batch["labels"])
