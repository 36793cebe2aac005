"""`type: input_output`: template-free rows of `segments`, each `{text, label}`.

Segments are tokenized exactly as written (no template, no special tokens added, no EOS
appended: write it in the text if the model should learn to stop), and trained where
`label` is true. As Axolotl's input_output.
"""

from __future__ import annotations

from typing import Any

from tuner.config.schema import DatasetConfig
from tuner.data.formats.base import FieldError, SegmentFormat, register
from tuner.data.labels import Segment


class InputOutput(SegmentFormat):
    name = "input_output"
    special_tokens_first = False
    append_eos = False

    def field_names(self, ds: DatasetConfig | None = None) -> tuple[str, ...]:
        return ("segments",)

    def segments(self, row: dict[str, Any], ds: DatasetConfig | None = None) -> list[Segment]:
        value = row.get("segments")
        if value is None:
            raise FieldError("segments", "is missing or null")
        if not isinstance(value, list) or not value:
            raise FieldError("segments", "must be a non-empty list of {text, label} objects")
        out = []
        for i, seg in enumerate(value):
            if not isinstance(seg, dict):
                raise FieldError(f"segments[{i}]", f"must be an object with text and label, got {type(seg).__name__}")
            text, label = seg.get("text"), seg.get("label")
            if not isinstance(text, str):
                raise FieldError(f"segments[{i}].text", "is missing or not a string")
            if not isinstance(label, bool):
                raise FieldError(f"segments[{i}].label", f"must be true or false, got {label!r}")
            out.append(Segment(text, label))
        if not any(s.text for s in out):
            raise FieldError("segments", "are all empty")
        return out


FORMAT = register(InputOutput())
segments = FORMAT.segments
