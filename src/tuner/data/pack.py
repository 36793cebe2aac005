"""Turning prepared rows into model batches (collators).

`pad_batch` right-pads the rows of a micro-batch to the longest row in it. Padding is
marked by position, never by token value: attention_mask 0 and labels -100 on padded
positions only, so a real EOS that shares its id with the pad token is still trained.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tuner.data.tokenize import IGNORE


def pad_batch(
    input_ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]], pad_token_id: int
) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids in input_ids)
    out_ids = torch.full((len(input_ids), width), pad_token_id, dtype=torch.long)
    out_labels = torch.full((len(input_ids), width), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((len(input_ids), width), dtype=torch.long)
    for i, (ids, labs) in enumerate(zip(input_ids, labels)):
        n = len(ids)
        out_ids[i, :n] = torch.as_tensor(ids, dtype=torch.long)
        out_labels[i, :n] = torch.as_tensor(labs, dtype=torch.long)
        attention_mask[i, :n] = 1
    return {"input_ids": out_ids, "attention_mask": attention_mask, "labels": out_labels}


def shuffled_order(rows: int, seed: int) -> list[int]:
    """The order rows are drawn in for one epoch (the training loop seeds it with seed + epoch)."""
    return torch.randperm(rows, generator=torch.Generator().manual_seed(seed)).tolist()
