"""Reward models (`reward_model: true`): Bradley-Terry on preference pairs, as TRL's RewardTrainer.

The model is a sequence classifier with one output (tuner.models.heads); a pair's chosen and
rejected sequences (prompt + answer, the prepared pairs of tuner.data.pairs) go through it in
one padding-free forward, and each sequence's reward is the head read at its last non-pad
token. The loss of a pair is

    -log sigmoid(r_chosen - r_rejected)  [+ center_rewards_coefficient * (r_chosen + r_rejected)^2]

summed over the step's pairs and divided by the pairs of the whole step (TRL: the mean over a
batch, which this is when the step is one batch). Metrics, per pair: accuracy (r_chosen >
r_rejected), margin (r_chosen - r_rejected), and the mean chosen and rejected rewards.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from tuner.config.schema import TunerConfig
from tuner.data.pairs import PairBatches
from tuner.models.heads import REWARD_HEAD, sequence_logits
from tuner.train.objectives.base import combined_loss

METRICS = ("accuracy", "margin", "rewards/chosen", "rewards/rejected")


def pair_sums(chosen: torch.Tensor, rejected: torch.Tensor, center: float | None) -> dict[str, torch.Tensor]:
    """The sums of a micro-batch of pairs from their rewards (one per pair, fp32)."""
    loss = -F.logsigmoid(chosen - rejected)
    if center:
        loss = loss + center * (chosen + rejected) ** 2
    c, r = chosen.detach(), rejected.detach()
    return {"loss": loss.sum(), "accuracy": (c > r).float().sum(), "margin": (c - r).sum(),
            "rewards/chosen": c.sum(), "rewards/rejected": r.sum()}


class RewardLoss(torch.nn.Module):
    """The model and the Bradley-Terry loss: forward(batch) -> the batch's sums."""

    def __init__(self, model: Any, objective: BradleyTerry):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, input_ids: torch.Tensor, sequence: torch.Tensor, labels: torch.Tensor | None = None,
                **rest: torch.Tensor) -> dict[str, torch.Tensor]:
        n = int(sequence.max()) // 2 + 1
        inputs = {"input_ids": input_ids, **{k: v for k, v in rest.items() if k in ("attention_mask", "position_ids")}}
        rewards = sequence_logits(self.model, inputs, sequence, 2 * n)[:, 0]
        return pair_sums(rewards[:n], rewards[n:], self.objective.center)


class BradleyTerry:
    name = "reward"
    count_names = ("pairs",)
    sum_names = ("loss", *METRICS)
    loss_terms = {"loss": "pairs"}
    head = REWARD_HEAD

    def __init__(self, cfg: TunerConfig):
        self.center = cfg.preference.center_rewards_coefficient

    def batches(self, rows: Any, cfg: TunerConfig, pad_token_id: int, evaluation: bool) -> PairBatches:
        return PairBatches(rows, pad_token_id, packed=True, pad_to_multiple_of=cfg.data.pad_to_multiple_of)

    def wrap(self, model: torch.nn.Module) -> RewardLoss:
        return RewardLoss(model, self)

    def sums(self, output: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return output

    def counts(self, batch: dict[str, torch.Tensor]) -> dict[str, int]:
        return {"pairs": int(batch["sequence"].max()) // 2 + 1}

    def report(self, sums: dict[str, float], counts: dict[str, float], evaluation: bool) -> dict[str, float]:
        pairs = counts.get("pairs", 0.0)
        out = {"loss": combined_loss(self, sums, counts)}
        out.update({k: sums[k] / pairs if pairs else math.nan for k in METRICS})
        if evaluation:
            out["pairs"] = int(pairs)
        return out
