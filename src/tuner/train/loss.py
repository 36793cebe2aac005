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
A chunk holds at most LOSS_CHUNK_BYTES of logits in backward (`chunk_positions`; the memory
plan sizes its loss term with the same function).

Selective recomputation (`selective_recompute`): without gradient checkpointing, each decoder
layer still runs under torch's selective activation checkpointing, whose policy keeps the
outputs of the expensive operations (the model's matrix multiplies and the attention kernel)
and recomputes the cheap ones in backward (norms, rotary embedding, activation function,
dtype casts, residual adds, and the low-rank LoRA up-projection). Gradients are bit-identical;
what a layer keeps for backward drops to its input, its matmul outputs and the attention
output (all in the compute dtype).
"""

from __future__ import annotations

import functools
import os
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
LOSS_CHUNK_BYTES = 256 << 20  # logits (and their gradients) one loss chunk may hold in backward
MIN_CHUNK = 128  # positions: below this a chunk's head matmul gets inefficient


def trained_token_count(labels: torch.Tensor) -> int:
    """Tokens whose loss counts: labels after the shift that are not -100 (tuner.data.labels)."""
    return trained_count(labels)


def chunk_positions(vocab_size: int, softcap: bool = False) -> int:
    """Positions per head + cross-entropy chunk: as many as keep the chunk's backward (12 B per
    logit: the saved log-softmax, the NLL and log-softmax gradients; + 8 B with a soft-cap)
    within LOSS_CHUNK_BYTES, and at least MIN_CHUNK. SmolLM2 (49,152 tokens): 455 positions."""
    per_position = (12 + (8 if softcap else 0)) * vocab_size
    return max(MIN_CHUNK, LOSS_CHUNK_BYTES // per_position)


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
        chunk = chunk_positions(head.weight.shape[0], bool(self.softcap))
        for start in range(0, targets.numel(), chunk):
            h, t = hidden[start : start + chunk], targets[start : start + chunk]
            if torch.is_grad_enabled():
                total = total + checkpoint(_chunk_loss, h, t, head, self.softcap, use_reentrant=False)
            else:
                total = total + _chunk_loss(h, t, head, self.softcap)
        return total


def _chunk_logps(hidden: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module, softcap: float | None) -> torch.Tensor:
    logits = head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None])[:, 0]


def token_logps(model: torch.nn.Module, input_ids: torch.Tensor, labels: torch.Tensor,
                attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """log p(label) of every trained token (labels after the shift that are not -100), in the
    order of `labels[:, 1:] != -100` (row by row). The head runs only on those positions, in
    chunks recomputed in backward, as for CausalLMLoss; models outside PLAIN_HEAD use their
    own full forward."""
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
    inputs = {k: v for k, v in inputs.items() if v is not None}
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    targets = labels[:, 1:]
    keep = targets != IGNORE
    softcap = getattr(base.config, "final_logit_softcapping", None)
    if getattr(base.config, "model_type", None) not in PLAIN_HEAD:
        logits = model(**inputs, use_cache=False).logits[:, :-1][keep].float()
        return torch.log_softmax(logits, dim=-1).gather(-1, targets[keep][:, None])[:, 0]
    hidden = base.get_decoder()(**inputs, use_cache=False).last_hidden_state[:, :-1][keep]
    targets = targets[keep]
    head = base.get_output_embeddings()
    pieces = []
    chunk = chunk_positions(head.weight.shape[0], bool(softcap))
    for start in range(0, targets.numel(), chunk):
        h, t = hidden[start : start + chunk], targets[start : start + chunk]
        if torch.is_grad_enabled():
            pieces.append(checkpoint(_chunk_logps, h, t, head, softcap, use_reentrant=False))
        else:
            pieces.append(_chunk_logps(h, t, head, softcap))
    return torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)


def sequence_logps(token_values: torch.Tensor, labels: torch.Tensor, sequence: torch.Tensor,
                   sequences: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of log-probs, trained tokens) per sequence. `sequence` gives, for every position of
    the batch, the index of the sequence it belongs to (-1 for padding); `token_values` are
    `token_logps` of the same batch."""
    keep = labels[:, 1:] != IGNORE
    owner = sequence[:, 1:][keep]
    sums = token_values.new_zeros(sequences).index_add(0, owner, token_values)
    counts = torch.zeros(sequences, dtype=torch.long, device=owner.device).index_add(
        0, owner, torch.ones_like(owner))
    return sums, counts


# --------------------------------------------------------------------------- selective recomputation

RECOMPUTE_ENV = "TUNER_SELECTIVE_RECOMPUTE"  # "0": keep every activation (for measurements)
LOW_RANK = 8  # a matmul whose inner size is <= hidden / LOW_RANK is cheap to recompute (LoRA's B)


def uses_selective_recompute(cfg: Any) -> bool:
    """Whether a run recomputes the cheap operations of its decoder layers in backward: when it
    does not checkpoint whole layers or compile them, and the layers are plain (not a k-bit base,
    whose dequantization is not cheap, nor DoRA, whose weight norm is a matmul of its own)."""
    t, a = cfg.training, cfg.adapter
    if os.environ.get(RECOMPUTE_ENV, "1").strip().lower() in ("0", "false", "off", "no"):
        return False
    return not (t.gradient_checkpointing or t.torch_compile or a.load_in_4bit or a.load_in_8bit or a.peft_use_dora)


def keeps_output(op: Any, args: tuple, hidden_size: int) -> bool:
    """The policy: keep what is expensive to compute again, recompute the rest.

    Kept: attention kernels (any op whose name says attention), batched matmuls (eager
    attention), and matrix multiplies whose inner dimension is large (the model's projections,
    LoRA's down-projection A, whose output is only r wide). Recomputed: every element-wise,
    reduction, cast and view op, and a matmul whose inner dimension is at most hidden / 8
    (LoRA's up-projection B: r multiply-adds per output element)."""
    name = op.name()
    if "attention" in name or "attn" in name or name in ("aten::bmm", "aten::baddbmm"):
        return True
    if name in ("aten::mm", "aten::addmm"):
        weight = args[1] if name == "aten::mm" else args[2]
        return weight.shape[-2] * LOW_RANK > hidden_size
    return False


def _policy(hidden_size: int, ctx: Any, op: Any, *args: Any, **kwargs: Any) -> Any:
    from torch.utils.checkpoint import CheckpointPolicy

    return CheckpointPolicy.MUST_SAVE if keeps_output(op, args, hidden_size) else CheckpointPolicy.PREFER_RECOMPUTE


def selective_recompute(model: Any) -> bool:
    """Run every decoder layer under selective activation checkpointing (the module docstring),
    through transformers' public checkpointing switch with torch's `context_fn`. Call after the
    adapter is applied. transformers then also makes the embeddings' output require grad (for
    reentrant checkpointing); non-reentrant checkpointing does not need it, so it is undone.
    False (and nothing changed) for a model class without checkpointing support."""
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(base, "supports_gradient_checkpointing", False):
        return False
    config = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
    policy = functools.partial(_policy, config.hidden_size)
    kwargs = {"use_reentrant": False, "context_fn": functools.partial(create_selective_checkpoint_contexts, policy)}
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.2x
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    base.disable_input_require_grads()
    return True
