"""`dataset_exact_deduplication` (Axolotl's): prepared rows that are exact copies of an earlier row
(every column: token ids, labels, ...) are dropped, keeping the first, before the evaluation split,
as Axolotl does (axolotl/utils/data/utils.py: a hash of each tokenized row). With `test_datasets`,
evaluation rows that are also training rows are dropped from the evaluation set, and counted."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datasets import Dataset


def _digests(rows: Dataset) -> Iterator[bytes]:
    columns = rows.column_names
    for row in rows.with_format(None):
        yield hashlib.sha256(repr([row[c] for c in columns]).encode()).digest()


def first_copies(rows: Dataset) -> list[int]:
    """The index of every row that is not an exact repeat of an earlier one."""
    seen: set[bytes] = set()
    keep: list[int] = []
    for i, digest in enumerate(_digests(rows)):
        if digest not in seen:
            seen.add(digest)
            keep.append(i)
    return keep


def drop_duplicates(rows: Dataset) -> tuple[Dataset, int]:
    """(the rows without exact repeats, how many were dropped)."""
    keep = first_copies(rows)
    dropped = rows.num_rows - len(keep)
    return (rows.select(keep) if dropped else rows), dropped


def drop_seen(rows: Dataset, seen_in: Dataset) -> tuple[Dataset, int]:
    """(`rows` without those that are exact copies of a row of `seen_in`, how many were dropped)."""
    if rows.column_names != seen_in.column_names:
        return rows, 0
    seen = set(_digests(seen_in))
    keep = [i for i, digest in enumerate(_digests(rows)) if digest not in seen]
    dropped = rows.num_rows - len(keep)
    return (rows.select(keep) if dropped else rows), dropped
