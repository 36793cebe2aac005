"""From prepared rows to model batches: padding, sample packing, and batch order.

Without packing, a micro-batch is right-padded to its longest row (rounded up to
`pad_to_multiple_of`; to `sequence_len` only with `pad_to_sequence_len`). Padding is marked by
position, never by token value: attention_mask 0 and labels -100 on padded positions only,
so a real EOS that shares its id with the pad token is still trained.

With `sample_packing`, rows are packed into bins of at most `sequence_len` tokens (best-fit
decreasing). A packed row carries no attention mask: `position_ids` restart at 0 for every
document, and transformers turns that into a block-diagonal causal mask (with sdpa or eager;
flash-attention reads the same position_ids), so no token attends across a document
boundary. The first token of each document gets label -100: it is never trained as the
continuation of the document before it. The tail of a packed row that is shorter than the
longest in its micro-batch is filled with pad tokens that form a document of their own
(positions restarting at 0, labels -100), so real tokens never attend to them.

`batch_flattening` (without packing) keeps the micro-batches of the unpacked order but puts
each one's rows end to end in a single packed row, as above: the same rows and the same
loss as the padded batch, without computing the padding.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tuner.data.labels import IGNORE


def shuffled_order(rows: int, seed: int) -> list[int]:
    """The order rows (or bins) are drawn in for one epoch (the loop seeds it with seed + epoch)."""
    return torch.randperm(rows, generator=torch.Generator().manual_seed(seed)).tolist()


def _width(longest: int, multiple: int | None, fixed: int | None) -> int:
    if fixed is not None:
        return max(fixed, longest)
    if multiple:
        return math.ceil(longest / multiple) * multiple
    return longest


def pad_batch(
    input_ids: Sequence[Sequence[int]],
    labels: Sequence[Sequence[int]],
    pad_token_id: int,
    pad_to_multiple_of: int | None = None,
    pad_to: int | None = None,
) -> dict[str, torch.Tensor]:
    width = _width(max(len(ids) for ids in input_ids), pad_to_multiple_of, pad_to)
    out_ids = torch.full((len(input_ids), width), pad_token_id, dtype=torch.long)
    out_labels = torch.full((len(input_ids), width), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((len(input_ids), width), dtype=torch.long)
    for i, (ids, labs) in enumerate(zip(input_ids, labels)):
        n = len(ids)
        out_ids[i, :n] = torch.as_tensor(ids, dtype=torch.long)
        out_labels[i, :n] = torch.as_tensor(labs, dtype=torch.long)
        attention_mask[i, :n] = 1
    return {"input_ids": out_ids, "attention_mask": attention_mask, "labels": out_labels}


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Bins of row indices, each holding at most `capacity` tokens (best-fit decreasing:
    longest rows first, each into the fullest bin it still fits)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin), kept sorted
    for i in order:
        need = lengths[i]
        if need > capacity:
            raise ValueError(f"row {i} has {need} tokens, more than the bin capacity {capacity}")
        at = bisect.bisect_left(free, (need, -1))
        if at < len(free):
            room, b = free.pop(at)
        else:
            room, b = capacity, len(bins)
            bins.append([])
        bins[b].append(i)
        if room - need > 0:
            bisect.insort(free, (room - need, b))
    return bins


def pack_in_order(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Bins of consecutive rows, in their order (`shuffle_merged_datasets: false`): each row goes
    into the current bin while it fits, else starts the next."""
    bins: list[list[int]] = []
    room = 0
    for i, need in enumerate(lengths):
        if need > capacity:
            raise ValueError(f"row {i} has {need} tokens, more than the bin capacity {capacity}")
        if not bins or need > room:
            bins.append([])
            room = capacity
        bins[-1].append(i)
        room -= need
    return bins


def packed_batch(
    rows: Sequence[Sequence[tuple[Sequence[int], Sequence[int]]]],
    pad_token_id: int,
    pad_to_multiple_of: int | None = None,
    pad_to: int | None = None,
) -> dict[str, torch.Tensor]:
    """A micro-batch of packed rows; each row is a list of (input_ids, labels) documents."""
    lengths = [sum(len(ids) for ids, _ in docs) for docs in rows]
    width = _width(max(lengths), pad_to_multiple_of, pad_to)
    out_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    out_labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for r, docs in enumerate(rows):
        at = 0
        for ids, labs in docs:
            n = len(ids)
            out_ids[r, at : at + n] = torch.as_tensor(ids, dtype=torch.long)
            out_labels[r, at + 1 : at + n] = torch.as_tensor(labs[1:], dtype=torch.long)  # first token: -100
            positions[r, at : at + n] = torch.arange(n)
            at += n
        positions[r, at:] = torch.arange(width - at)  # the padding tail is a document of its own
    return {"input_ids": out_ids, "position_ids": positions, "labels": out_labels}


@dataclass
class Batches:
    """Micro-batches of prepared rows, packed or padded, by unit index.

    A unit is a row, or (with packing) a bin of rows; the training loop shuffles units.
    """

    rows: Any  # a datasets.Dataset with input_ids and labels
    pad_token_id: int
    sequence_len: int
    packing: bool = False
    pad_to_multiple_of: int | None = None
    pad_to_sequence_len: bool = False
    flatten: bool = False  # batch_flattening: a micro-batch of rows as one row of documents
    in_order: bool = False  # packing keeps the rows' order (shuffle_merged_datasets: false)

    def __post_init__(self) -> None:
        self.lengths = [len(ids) for ids in self.rows["input_ids"]]
        pack = pack_in_order if self.in_order else pack_rows
        self.bins = pack(self.lengths, self.sequence_len) if self.packing else None

    @property
    def units(self) -> int:
        return len(self.bins) if self.bins is not None else len(self.lengths)

    @property
    def efficiency(self) -> float:
        """Real tokens / token slots of the packed bins (1.0 without packing)."""
        if self.bins is None:
            return 1.0
        return sum(self.lengths) / (len(self.bins) * self.sequence_len)

    def tokens(self, units: Sequence[int]) -> int:
        """Real (non-padding) tokens in these units."""
        if self.bins is None:
            return sum(self.lengths[u] for u in units)
        return sum(self.lengths[i] for u in units for i in self.bins[u])

    def batch(self, units: Sequence[int]) -> dict[str, torch.Tensor]:
        pad_to = self.sequence_len if self.pad_to_sequence_len else None
        if self.bins is None:
            picked = self.rows[list(units)]
            if self.flatten:  # the rows end to end: one packed row, nothing padded
                docs = list(zip(picked["input_ids"], picked["labels"]))
                return packed_batch([docs], self.pad_token_id, self.pad_to_multiple_of)
            return pad_batch(picked["input_ids"], picked["labels"], self.pad_token_id, self.pad_to_multiple_of, pad_to)
        members = [self.bins[u] for u in units]
        picked = self.rows[[i for m in members for i in m]]
        docs = iter(zip(picked["input_ids"], picked["labels"]))
        rows = [[next(docs) for _ in m] for m in members]
        return packed_batch(rows, self.pad_token_id, self.pad_to_multiple_of, pad_to)
