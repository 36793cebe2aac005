"""Classified texts as model batches (type: classification; tuner.data.formats.classification).

A micro-batch of n texts is one padding-free row: the texts end to end, `position_ids`
restarting at 0 for each (no token attends across a text boundary, as for sample packing),
`sequence` giving each position the index of its text (-1: padding), and `targets` the n
labels as the model's targets (class ids, or floats for a regression), by the run's LabelMap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tuner.data.formats.classification import LabelMap
from tuner.data.labels import IGNORE
from tuner.data.pack import packed_batch


@dataclass
class ClassifiedBatches:
    rows: Any  # a datasets.Dataset with input_ids and label (JSON, as written)
    pad_token_id: int
    labels: LabelMap
    pad_to_multiple_of: int | None = None
    where: str = "datasets"

    def __post_init__(self) -> None:
        self.lengths = [len(ids) for ids in self.rows["input_ids"]]
        self.targets = [self.labels.target(v, f"{self.where}: prepared row {i}: ") for i, v in enumerate(self.rows["label"])]
        self.efficiency = 1.0

    @property
    def units(self) -> int:
        return len(self.lengths)

    def tokens(self, units: Sequence[int]) -> int:
        return sum(self.lengths[u] for u in units)

    def batch(self, units: Sequence[int]) -> dict[str, torch.Tensor]:
        picked = self.rows[list(units)]["input_ids"]
        batch = packed_batch([[(ids, [IGNORE] * len(ids)) for ids in picked]], self.pad_token_id, self.pad_to_multiple_of)
        del batch["labels"]
        sequence = torch.full_like(batch["input_ids"], -1)
        at = 0
        for k, ids in enumerate(picked):
            sequence[0, at : at + len(ids)] = k
            at += len(ids)
        batch["sequence"] = sequence
        dtype = torch.float32 if self.labels.regression else torch.long
        batch["targets"] = torch.as_tensor([self.targets[u] for u in units], dtype=dtype)
        return batch
