"""Supervised fine-tuning: next-token cross-entropy on the trained tokens (labels != -100).

Rows are `input_ids` + `labels` from the data stage; micro-batches are padded or packed
(tuner.data.pack.Batches); the loss is tuner's CausalLMLoss (the head runs only on trained
positions), summed and normalised by the trained tokens of the whole optimizer step.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from tuner.config.schema import TunerConfig
from tuner.data.pack import Batches
from tuner.data.stream import StreamBatches, TokenStream
from tuner.train.loss import CausalLMLoss, trained_token_count
from tuner.train.objectives.base import combined_loss


class SFT:
    name = "sft"
    head = None  # a causal LM
    count_names = ("trained_tokens",)
    sum_names = ("loss",)
    loss_terms = {"loss": "trained_tokens"}

    def batches(self, rows: Any, cfg: TunerConfig, pad_token_id: int, evaluation: bool) -> Batches | StreamBatches:
        if isinstance(rows, TokenStream):  # pretraining_dataset: packed rows as the corpus streams
            return StreamBatches.of(rows, cfg, pad_token_id)
        d = cfg.data
        packing = d.sample_packing
        if evaluation and d.eval_sample_packing is not None:
            packing = d.eval_sample_packing
        return Batches(rows, pad_token_id, d.sequence_len, packing, d.pad_to_multiple_of, d.pad_to_sequence_len,
                       d.batch_flattening and not packing, in_order=not d.shuffle_merged_datasets)

    def wrap(self, model: torch.nn.Module) -> CausalLMLoss:
        return CausalLMLoss(model)

    def sums(self, output: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": output}

    def counts(self, batch: dict[str, torch.Tensor]) -> dict[str, int]:
        return {"trained_tokens": trained_token_count(batch["labels"])}

    def report(self, sums: dict[str, float], counts: dict[str, float], evaluation: bool) -> dict[str, float]:
        loss = combined_loss(self, sums, counts)
        if evaluation:
            return {"loss": loss, "perplexity": math.exp(min(loss, 50)), "tokens": int(counts["trained_tokens"])}
        return {"loss": loss}
