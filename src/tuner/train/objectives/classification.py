"""Sequence classification (`type: classification` datasets, a *ForSequenceClassification head).

The classes come from the config or the training rows (tuner.data.formats.classification.
label_map) and are what the head is built with (`head`). A micro-batch of texts goes through
the model in one padding-free forward (tuner.data.classified); each text's logits are the head
read at its last non-pad token (tuner.models.heads), as transformers' own forward reads them.

Loss: cross-entropy on the class id (as transformers' single_label_classification), or for a
regression (`num_labels: 1`, numeric labels) the squared error (transformers' MSE); summed over
the step's texts and divided by the texts of the whole step. Metrics: accuracy; on evaluation
also each class's F1 (2 tp / (2 tp + fp + fn), `f1/<name>`) and their mean (`f1_macro`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from tuner.config.schema import TunerConfig
from tuner.data.classified import ClassifiedBatches
from tuner.data.formats.classification import LabelMap, label_map
from tuner.models.heads import Head, sequence_logits
from tuner.train.objectives.base import combined_loss


class ClassifierLoss(torch.nn.Module):
    def __init__(self, model: Any, objective: Classification):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, input_ids: torch.Tensor, sequence: torch.Tensor, targets: torch.Tensor,
                **rest: torch.Tensor) -> dict[str, torch.Tensor]:
        inputs = {"input_ids": input_ids, **{k: v for k, v in rest.items() if k in ("attention_mask", "position_ids")}}
        logits = sequence_logits(self.model, inputs, sequence, targets.numel())
        return self.objective.batch_sums(logits, targets)


class Classification:
    name = "classification"
    count_names = ("texts",)
    loss_terms = {"loss": "texts"}

    def __init__(self, cfg: TunerConfig, labels: LabelMap):
        self.labels = labels
        self.head = Head(labels.num_labels, dict(labels.id2label),
                         "regression" if labels.regression else "single_label_classification")
        classes = () if labels.regression else tuple(range(labels.num_labels))
        self.sum_names = ("loss", "correct", *(f"{k}/{i}" for i in classes for k in ("tp", "fp", "fn")))

    @classmethod
    def for_data(cls, cfg: TunerConfig, train_rows: Any, checkpoint_labels: dict[int, str] | None) -> Classification:
        return cls(cfg, label_map(cfg.model, list(train_rows["label"]), checkpoint_labels))

    def batches(self, rows: Any, cfg: TunerConfig, pad_token_id: int, evaluation: bool) -> ClassifiedBatches:
        return ClassifiedBatches(rows, pad_token_id, self.labels, cfg.data.pad_to_multiple_of,
                                 "evaluation rows" if evaluation else "training rows")

    def wrap(self, model: torch.nn.Module) -> ClassifierLoss:
        return ClassifierLoss(model, self)

    def sums(self, output: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return output

    def counts(self, batch: dict[str, torch.Tensor]) -> dict[str, int]:
        return {"texts": int(batch["targets"].numel())}

    def batch_sums(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.labels.regression:
            loss = F.mse_loss(logits[:, 0], targets.float(), reduction="sum")
            return {"loss": loss, "correct": loss.new_zeros(())}
        loss = F.cross_entropy(logits, targets, reduction="sum")
        predicted = logits.detach().argmax(-1)
        out = {"loss": loss, "correct": (predicted == targets).float().sum()}
        for i in range(self.labels.num_labels):
            p, t = predicted == i, targets == i
            out[f"tp/{i}"] = (p & t).float().sum()
            out[f"fp/{i}"] = (p & ~t).float().sum()
            out[f"fn/{i}"] = (~p & t).float().sum()
        return out

    def report(self, sums: dict[str, float], counts: dict[str, float], evaluation: bool) -> dict[str, float]:
        texts = counts.get("texts", 0.0)
        out = {"loss": combined_loss(self, sums, counts)}
        if self.labels.regression:
            if evaluation:
                out["texts"] = int(texts)
            return out
        out["accuracy"] = sums["correct"] / texts if texts else math.nan
        if evaluation:
            f1s = []
            for i, name in self.labels.id2label.items():
                tp, fp, fn = sums[f"tp/{i}"], sums[f"fp/{i}"], sums[f"fn/{i}"]
                f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan
                out[f"f1/{name}"] = f1
                f1s.append(f1)
            present = [f for f in f1s if not math.isnan(f)]
            out["f1_macro"] = sum(present) / len(present) if present else math.nan
            out["texts"] = int(texts)
        return out
