"""What a label is: the leaf module every part of tuner that builds or reads labels imports.

A prepared row has one label per token: the token id where the token is trained, IGNORE
(-100, as PyTorch's cross-entropy `ignore_index` and every peer use) where it is not. The
first token of a row is never trained, whatever its label: nothing comes before it, so the
model never predicts it. `trained_count` is the one place that rule is written.

This module imports nothing of tuner (no cycles: tokenize, formats, pack, the loss and
`tuner info` all import it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IGNORE = -100  # the label of a token that is not trained


@dataclass(frozen=True)
class Segment:
    """A piece of a row's text, trained (its tokens keep their ids as labels) or not."""

    text: str
    train: bool


def trained_positions(labels: list[int]) -> list[bool]:
    """Whether each position of one row is trained (has a label and is not the row's first)."""
    return [i > 0 and label != IGNORE for i, label in enumerate(labels)]


def trained_count(labels: Any) -> int:
    """Trained tokens: positions after the first of each row whose label is not IGNORE.

    `labels` is one row (a list of ints, or a 1-D numpy array / torch tensor) or a batch
    (a 2-D array or tensor, one row per line; or a list of rows). For a batch it is the
    count the loss is normalised by: the labels after the shift that are not IGNORE.
    """
    if hasattr(labels, "ndim"):  # numpy array or torch tensor: vectorised
        if labels.ndim == 0 or labels.shape[-1] == 0:
            return 0
        return int((labels[..., 1:] != IGNORE).sum())
    rows = labels if isinstance(labels, list) else list(labels)
    if rows and (isinstance(rows[0], (list, tuple)) or getattr(rows[0], "ndim", 0) >= 1):
        return sum(trained_count(row) for row in rows)
    return len(rows) - 1 - rows[1:].count(IGNORE) if rows else 0  # list.count: one C loop, not one per token
