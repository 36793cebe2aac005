"""Preference pairs as model batches: the chosen and the rejected sequence of every pair go
through the model in one forward.

A prepared pair row holds `chosen_input_ids` / `chosen_labels` and `rejected_input_ids` /
`rejected_labels`: the whole sequence (prompt, then completion) with the prompt's labels
-100, built once by the data stage (tuner.data.preference). The prompt tokens are identical
in both.

Two layouts, the same numbers:
  * packed (padding-free): a micro-batch of P pairs is one row of 2P documents end to end,
    chosen then rejected for each pair, `position_ids` restarting at 0 for each document (no
    token attends across a document boundary, as for sample packing);
  * padded: 2P rows (the P chosen, then the P rejected), right-padded to the longest.
Either way `sequence` gives each position the index of the sequence it belongs to (chosen of
pair i: i, rejected: P + i; -1 for padding), so a loss can sum log-probs per sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tuner.data.pack import packed_batch, pad_batch

PAIR_COLUMNS = ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels")


@dataclass
class PairBatches:
    rows: Any  # a datasets.Dataset with PAIR_COLUMNS (and optionally ref_chosen_logps / ref_rejected_logps)
    pad_token_id: int
    packed: bool = True
    pad_to_multiple_of: int | None = None

    def __post_init__(self) -> None:
        self.lengths = [len(c) + len(r) for c, r in zip(self.rows["chosen_input_ids"], self.rows["rejected_input_ids"])]
        self.efficiency = 1.0

    @property
    def units(self) -> int:
        return len(self.lengths)

    def tokens(self, units: Sequence[int]) -> int:
        return sum(self.lengths[u] for u in units)

    def batch(self, units: Sequence[int]) -> dict[str, torch.Tensor]:
        picked = self.rows[list(units)]
        n = len(units)
        docs = [(ids, labs) for side in ("chosen", "rejected")
                for ids, labs in zip(picked[f"{side}_input_ids"], picked[f"{side}_labels"])]
        order = [k for i in range(n) for k in (i, n + i)]  # packed: chosen_i, rejected_i, ...
        batch = _sequences(docs, self.pad_token_id, self.packed, self.pad_to_multiple_of, order)
        for side in ("chosen", "rejected"):
            key = f"ref_{side}_logps"
            if key in picked:
                batch[key] = torch.as_tensor(picked[key], dtype=torch.float64)
        return batch


UNPAIRED_COLUMNS = ("input_ids", "labels", "prompt_len", "desirable")


@dataclass
class UnpairedBatches:
    """KTO's micro-batches: n examples, and (keys prefixed `kl_`) their n KL sequences. The KL
    sequence of example i is its prompt followed by the completion of example i - 1 of the same
    micro-batch (example 0 takes the last one's), TRL's rule, applied here because tuner
    shuffles examples into micro-batches (a micro-batch needs two examples or more).
    `desirable` marks the examples' labels."""

    rows: Any  # a datasets.Dataset with UNPAIRED_COLUMNS
    pad_token_id: int
    packed: bool = True
    pad_to_multiple_of: int | None = None

    def __post_init__(self) -> None:
        self.lengths = [len(ids) for ids in self.rows["input_ids"]]
        self.efficiency = 1.0

    @property
    def units(self) -> int:
        return len(self.lengths)

    def tokens(self, units: Sequence[int]) -> int:
        return 2 * sum(self.lengths[u] for u in units)  # each example and one KL sequence of about its length

    def batch(self, units: Sequence[int]) -> dict[str, torch.Tensor]:
        picked = self.rows[list(units)]
        n = len(units)
        docs = list(zip(picked["input_ids"], picked["labels"]))
        cut = picked["prompt_len"]
        kl = []
        for i in range(n):
            j = (i - 1) % n
            prompt = docs[i][0][: cut[i]]
            completion, labels = docs[j][0][cut[j]:], docs[j][1][cut[j]:]
            kl.append(([*prompt, *completion], [-100] * len(prompt) + list(labels)))
        batch = _sequences(docs, self.pad_token_id, self.packed, self.pad_to_multiple_of)
        batch.update({f"kl_{k}": v for k, v in _sequences(kl, self.pad_token_id, self.packed,
                                                            self.pad_to_multiple_of).items()})
        batch["desirable"] = torch.as_tensor(picked["desirable"], dtype=torch.bool)
        return batch


def _sequences(docs: list[tuple[list[int], list[int]]], pad_token_id: int, packed: bool,
               pad_to_multiple_of: int | None, order: list[int] | None = None) -> dict[str, torch.Tensor]:
    """Documents as one packed row (in `order`) or as padded rows, with `sequence` set."""
    if packed:
        order = order or list(range(len(docs)))
        batch = packed_batch([[docs[k] for k in order]], pad_token_id, pad_to_multiple_of)
        sequence = torch.full_like(batch["input_ids"], -1)
        at = 0
        for k in order:
            sequence[0, at : at + len(docs[k][0])] = k
            at += len(docs[k][0])
    else:
        batch = pad_batch([d[0] for d in docs], [d[1] for d in docs], pad_token_id, pad_to_multiple_of)
        sequence = torch.where(batch["attention_mask"].bool(), torch.arange(len(docs))[:, None], -1)
    batch["sequence"] = sequence
    return batch
