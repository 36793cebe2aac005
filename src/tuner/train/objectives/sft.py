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
from tuner.train.loss import CausalLMLoss, trained_token_count


class SFT:
    name = "sft"
    count_name = "trained_tokens"
    sum_names = ("loss",)

    def batches(self, rows: Any, cfg: TunerConfig, pad_token_id: int, evaluation: bool) -> Batches:
        d = cfg.data
        packing = d.sample_packing
        if evaluation and d.eval_sample_packing is not None:
            packing = d.eval_sample_packing
        return Batches(rows, pad_token_id, d.sequence_len, packing, d.pad_to_multiple_of, d.pad_to_sequence_len,
                       d.batch_flattening and not packing)

    def wrap(self, model: torch.nn.Module) -> CausalLMLoss:
        return CausalLMLoss(model)

    def sums(self, output: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": output}

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return trained_token_count(batch["labels"])

    def report(self, sums: dict[str, float], count: float, evaluation: bool) -> dict[str, float]:
        loss = sums["loss"] / count if count else math.nan
        if evaluation:
            return {"loss": loss, "perplexity": math.exp(min(loss, 50)), "tokens": int(count)}
        return {"loss": loss}
