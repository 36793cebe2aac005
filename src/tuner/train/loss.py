"""The causal-LM loss, computed by tuner.

The logits at position t predict the label at t+1; labels of -100 are ignored. The loss
is a *sum* over trained tokens: the loop divides by the trained tokens of the whole
optimizer step (all micro-batches, all processes), never by a per-batch mean.

Only trained positions reach the output head: the decoder's hidden states are gathered at
the positions whose next label is trained, and the head and cross-entropy run on them in
chunks, each recomputed in backward (activation checkpointing), so prompt and padding
positions cost nothing in the head and the [tokens x vocabulary] fp32 logits of a batch
are never held at once. Architectures whose head does more than a linear layer (Gemma 2/3
soft-cap their logits) are handled; unknown ones fall back to the model's own forward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from tuner.data.labels import IGNORE, trained_count

# model_type -> the head is `lm_head(hidden)` (+ optional final_logit_softcapping): known to be
# safe for the gathered path. Others use the full forward (still correct, just slower).
PLAIN_HEAD = {
    "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2", "gemma3_text",
    "phi3", "olmo", "olmo2", "granite", "starcoder2", "smollm3", "stablelm",
}
CHUNK_TOKENS = 2048


def trained_token_count(labels: torch.Tensor) -> int:
    """Tokens whose loss counts: labels after the shift that are not -100 (tuner.data.labels)."""
    return trained_count(labels)


def shifted_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of token cross-entropies, in fp32, over positions whose next label is trained."""
    shift_logits = logits[:, :-1, :].reshape(-1, logits.shape[-1])
    shift_labels = labels[:, 1:].reshape(-1)
    return F.cross_entropy(shift_logits.float(), shift_labels, ignore_index=IGNORE, reduction="sum")


def _chunk_loss(hidden: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module, softcap: float | None) -> torch.Tensor:
    logits = head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, targets, reduction="sum")


class CausalLMLoss(torch.nn.Module):
    """The model and tuner's loss in one module: forward(batch) -> summed token loss.

    Wrapping both lets accelerate (DDP, FSDP, autocast) wrap one module whose forward runs
    every parameter, while the head only sees trained positions.
    """

    def __init__(self, model: torch.nn.Module, gathered_head: bool | None = None):
        super().__init__()
        self.model = model
        base = self.base
        model_type = getattr(base.config, "model_type", None)
        self.gathered_head = (model_type in PLAIN_HEAD) if gathered_head is None else gathered_head
        self.softcap = getattr(base.config, "final_logit_softcapping", None)

    @property
    def base(self) -> Any:
        """The transformers model inside (under a peft wrapper, if any)."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        inputs = {k: v for k, v in inputs.items() if v is not None}
        if not self.gathered_head:
            # use_cache=False: with a cache object transformers ignores packed position_ids.
            return shifted_loss_sum(self.model(**inputs, use_cache=False).logits, labels)
        base = self.base
        hidden = base.get_decoder()(**inputs, use_cache=False).last_hidden_state
        targets = labels[:, 1:]
        keep = targets != IGNORE
        hidden, targets = hidden[:, :-1][keep], targets[keep]
        head = base.get_output_embeddings()
        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, targets.numel(), CHUNK_TOKENS):
            h, t = hidden[start : start + CHUNK_TOKENS], targets[start : start + CHUNK_TOKENS]
            if torch.is_grad_enabled():
                total = total + checkpoint(_chunk_loss, h, t, head, self.softcap, use_reentrant=False)
            else:
                total = total + _chunk_loss(h, t, head, self.softcap)
        return total
