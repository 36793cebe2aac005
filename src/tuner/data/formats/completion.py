"""`type: completion`: raw text in one field (`text`, or the dataset's `field`), all trained."""

from __future__ import annotations

from typing import Any

from tuner.config.schema import DatasetConfig
from tuner.data.formats import Segment, text_field


def field_name(ds: DatasetConfig | None) -> str:
    return (ds.field if ds is not None else None) or "text"


def field_names(ds: DatasetConfig | None) -> tuple[str, ...]:
    return (field_name(ds),)


def prompt(row: dict[str, Any], ds: DatasetConfig | None = None) -> str:
    return ""


def segments(row: dict[str, Any], ds: DatasetConfig | None = None) -> list[Segment]:
    return [Segment(text_field(row, field_name(ds)), train=True)]
