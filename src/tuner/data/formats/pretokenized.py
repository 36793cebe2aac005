"""Rows that are already token ids (`type` left out): `input_ids`, optional `labels` and
`attention_mask`. They are used as they are, after validation: ids within the vocabulary,
labels -100 or within the vocabulary, all lists of equal length, no padding. Without
`labels`, every token trains.
"""

from __future__ import annotations

from typing import Any

from tuner.config.schema import DatasetConfig
from tuner.data.formats.base import DatasetFormat, EncodeContext, EncodeResult, FieldError, register
from tuner.data.labels import IGNORE


def _ints(row: dict[str, Any], name: str) -> list[int] | None:
    value = row.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise FieldError(name, "must be a list of whole numbers")
    return value


def encode(row: dict[str, Any], vocab_size: int | None) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one row, checked (against the vocabulary when its size is given)."""
    ids = _ints(row, "input_ids")
    if not ids:
        raise FieldError("input_ids", "is missing or empty")
    labels = _ints(row, "labels")
    mask = _ints(row, "attention_mask")
    for name, values in (("labels", labels), ("attention_mask", mask)):
        if values is not None and len(values) != len(ids):
            raise FieldError(name, f"has {len(values)} entries but input_ids has {len(ids)}")
    if vocab_size is not None:
        bad = next((i for i in ids if not 0 <= i < vocab_size), None)
        if bad is not None:
            raise FieldError("input_ids", f"holds {bad}, outside the vocabulary (0 to {vocab_size - 1})")
        bad = next((i for i in labels or [] if i != IGNORE and not 0 <= i < vocab_size), None)
        if bad is not None:
            raise FieldError("labels", f"holds {bad}: labels are -100 or token ids (0 to {vocab_size - 1})")
    if mask is not None and any(m != 1 for m in mask):
        raise FieldError("attention_mask", "marks padding; give unpadded rows (tuner pads each batch itself)")
    return ids, list(labels) if labels is not None else list(ids)


class Pretokenized(DatasetFormat):
    name = "pretokenized"

    def field_names(self, ds: DatasetConfig | None = None) -> tuple[str, ...]:
        return ("input_ids", "labels", "attention_mask")

    def check(self, row: dict[str, Any], ds: DatasetConfig | None = None) -> None:
        encode(row, None)

    def encode_many(self, rows: list[dict[str, Any]], ds: DatasetConfig | None, ctx: EncodeContext) -> list[EncodeResult]:
        vocab_size = len(ctx.tokenizer)
        out: list[EncodeResult] = []
        for row in rows:
            try:
                out.append(encode(row, vocab_size))
            except FieldError as err:
                out.append(err)
        return out


FORMAT = register(Pretokenized())
