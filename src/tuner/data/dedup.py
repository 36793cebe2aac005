"""`dataset_exact_deduplication` (Axolotl's): prepared rows that are exact copies of an earlier row
(every column: token ids, labels, ...) are dropped, keeping the first, before the evaluation split,
as Axolotl does (axolotl/utils/data/utils.py: a hash of each tokenized row)."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datasets import Dataset


def drop_duplicates(rows: Dataset) -> tuple[Dataset, int]:
    """(the rows without exact repeats, how many were dropped)."""
    seen: set[bytes] = set()
    keep: list[int] = []
    columns = rows.column_names
    for i, row in enumerate(rows.with_format(None)):
        digest = hashlib.sha256(repr([row[c] for c in columns]).encode()).digest()
        if digest not in seen:
            seen.add(digest)
            keep.append(i)
    dropped = rows.num_rows - len(keep)
    return (rows.select(keep) if dropped else rows), dropped
