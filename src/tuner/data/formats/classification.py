"""Sequence classification: `type: classification`, a text and its label per row.

    {"text": "the film was wonderful", "label": "positive"}

`field_text` (default `text`) is tokenized as transformers' text-classification pipeline
tokenizes it (`tokenizer(text)`, the tokenizer's own special tokens, no EOS added), so the
saved model reads its inputs the way it was trained. `field_label` (default `label`) is a
class name, an integer class id, or a number (regression, `num_labels: 1`).

The prepared row keeps the label as written, JSON-encoded (`label`: '"positive"', '1', '0.5'):
which id a name gets is decided once the training rows are known (`label_map`: id2label /
label2id from the config, else the checkpoint's own labels, else the names in the training
data, sorted), so the prepared data does not depend on it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from tuner.config.schema import DatasetConfig, ModelBlock
from tuner.data.formats.base import DatasetFormat, EncodeContext, FieldError, register, text_field
from tuner.errors import UserError


def _label(row: dict[str, Any], name: str) -> str:
    value = row.get(name)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)) or (isinstance(value, str) and not value.strip()):
        raise FieldError(name, f"must be a class name, an integer class id or a number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise FieldError(name, f"must be a finite number, got {value!r}")
    return json.dumps(value)


class Classification(DatasetFormat):
    name = "classification"
    rows = "classified"

    def field_names(self, ds: DatasetConfig | None) -> tuple[str, ...]:
        assert ds is not None
        return (ds.field_text, ds.field_label)

    def check(self, row: dict[str, Any], ds: DatasetConfig | None) -> None:
        assert ds is not None
        text_field(row, ds.field_text)
        _label(row, ds.field_label)

    def encode_many(self, rows: list[dict[str, Any]], ds: DatasetConfig | None, ctx: EncodeContext) -> list[Any]:
        assert ds is not None
        parsed: list[Any] = []
        for row in rows:
            try:
                parsed.append((text_field(row, ds.field_text), _label(row, ds.field_label)))
            except FieldError as err:
                parsed.append(err)
        good = [p for p in parsed if not isinstance(p, FieldError)]
        ids = iter(ctx.tokenizer([text for text, _ in good])["input_ids"] if good else [])
        return [p if isinstance(p, FieldError) else (list(next(ids)), p[1]) for p in parsed]


register(Classification())


def classified_row(encoded: tuple[list[int], str], sequence_len: int, strategy: str, min_len: int | None) -> dict[str, Any]:
    """The prepared row of a classified text, with its status (tokenize.KEPT / TOO_LONG / TOO_SHORT):
    under `truncate` a text longer than sequence_len keeps its first sequence_len tokens."""
    from tuner.data.tokenize import KEPT, NOTHING_TO_TRAIN, TOO_LONG, TOO_SHORT

    ids, label = encoded
    status, truncated = KEPT, False
    if min_len and len(ids) < min_len:
        status = TOO_SHORT
    elif len(ids) > sequence_len:
        if strategy == "truncate":
            ids, truncated = ids[:sequence_len], True
        else:
            status = TOO_LONG
    if status == KEPT and not ids:
        status = NOTHING_TO_TRAIN
    return {"input_ids": ids, "label": label, "status": status, "truncated": truncated}


# --------------------------------------------------------------------------- labels -> ids


@dataclass(frozen=True)
class LabelMap:
    """How a prepared row's label becomes the model's target."""

    id2label: dict[int, str]
    regression: bool = False

    @property
    def num_labels(self) -> int:
        return 1 if self.regression else len(self.id2label)

    def target(self, label: str, where: str = "") -> float | int:
        value = json.loads(label)
        if self.regression:
            if isinstance(value, str):
                raise UserError(f"{where}label {value!r}: num_labels: 1 is a regression on numbers; this label is a name")
            return float(value)
        if isinstance(value, str):
            ids = {name: i for i, name in self.id2label.items()}
            if value not in ids:
                raise UserError(f"{where}label {value!r} is not one of the classes {list(ids)}"
                                " (id2label / label2id, or the training data's names)")
            return ids[value]
        if isinstance(value, float) and value != int(value) or not 0 <= int(value) < len(self.id2label):
            raise UserError(f"{where}label {value!r} is not a class id 0..{len(self.id2label) - 1}"
                            " (for a regression on numbers set num_labels: 1)")
        return int(value)


def label_map(m: ModelBlock, train_labels: list[str], checkpoint: dict[int, str] | None = None) -> LabelMap:
    """The classes: `id2label` / `label2id` when the config gives them; else a classifier
    checkpoint's own labels when they name every training label; else from the training rows
    (names: sorted; integer ids: 0..max, named LABEL_i, or `num_labels` of them; numbers that
    are not whole, or `num_labels: 1`: a regression)."""
    values = [json.loads(v) for v in sorted(set(train_labels))]
    names = sorted(v for v in values if isinstance(v, str))
    numbers = [v for v in values if not isinstance(v, str)]
    if m.num_labels == 1 or (numbers and not names and any(v != int(v) for v in numbers)):
        if names:
            raise UserError(f"num_labels: 1 (a regression) but the training labels include names: {names[:5]}")
        return LabelMap({0: "score"}, regression=True)
    given = dict(m.id2label or {}) or {i: n for n, i in (m.label2id or {}).items()}
    if not given and checkpoint and set(names) <= set(checkpoint.values()) and \
            all(int(v) < len(checkpoint) for v in numbers):
        given = dict(checkpoint)
    if given:
        return LabelMap(dict(sorted(given.items())))
    if names and numbers:
        raise UserError(f"the training labels mix class names ({names[:3]}) and ids ({numbers[:3]}); write one kind, "
                        "or give id2label to say which id each name is")
    if names:
        if m.num_labels is not None and m.num_labels != len(names):
            raise UserError(f"num_labels: {m.num_labels}, but the training data has {len(names)} class names: "
                            f"{names[:10]}")
        return LabelMap(dict(enumerate(names)))
    ids = [int(v) for v in numbers]
    if min(ids) < 0:
        raise UserError(f"label {min(ids)}: class ids start at 0")
    count = m.num_labels or max(ids) + 1
    if max(ids) >= count:
        raise UserError(f"num_labels: {count}, but the training data has class id {max(ids)}")
    if count < 2:
        raise UserError("the training data has a single class (0); a classifier needs two or more "
                        "(set num_labels, or num_labels: 1 for a regression)")
    return LabelMap({i: f"LABEL_{i}" for i in range(count)})
