"""`type: completion`: raw text in one field (`text`, or the dataset's `field`), all trained."""

from __future__ import annotations

from typing import Any

from tuner.config.schema import DatasetConfig
from tuner.data.formats.base import SegmentFormat, register, text_field
from tuner.data.labels import Segment


def field_name(ds: DatasetConfig | None) -> str:
    return (ds.field if ds is not None else None) or "text"


class Completion(SegmentFormat):
    name = "completion"

    def field_names(self, ds: DatasetConfig | None) -> tuple[str, ...]:
        return (field_name(ds),)

    def segments(self, row: dict[str, Any], ds: DatasetConfig | None = None) -> list[Segment]:
        return [Segment(text_field(row, field_name(ds)), train=True)]


FORMAT = register(Completion())
segments = FORMAT.segments
