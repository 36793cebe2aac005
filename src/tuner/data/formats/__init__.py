"""Dataset formats: one module per dataset `type`.

A format turns one raw row into `Segment`s: pieces of text in order, each marked as
trained (its tokens get real labels) or not (labels -100). Tokenization, EOS handling and
length policy are the same for every format and live in `tuner.data.tokenize`.

Segment formats (alpaca, completion, input_output, user-defined) expose:
    field_names(ds) -> tuple[str, ...]   the row fields it reads
    segments(row, ds) -> list[Segment]   (raises FieldError for a bad field)
    prompt(row, ds) -> str               (the text a model is given at inference time)
    SPECIAL_TOKENS_FIRST, APPEND_EOS     (optional flags; both true unless set)
Chat conversations (chat_template) and pre-tokenized rows need the tokenizer itself and
expose `encode(...)` instead; see their modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any


@dataclass(frozen=True)
class Segment:
    text: str
    train: bool


class FieldError(ValueError):
    """A row's field is missing or has the wrong type. Turned into a RowError by the caller."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"field {field!r} {problem}")
        self.field = field


def text_field(row: dict[str, Any], name: str, required: bool = True) -> str:
    """A string field; a missing/null optional field reads as ''."""
    value = row.get(name)
    if value is None:
        if required:
            raise FieldError(name, "is missing or null")
        return ""
    if not isinstance(value, str):
        raise FieldError(name, f"must be a string, got {type(value).__name__} {str(value)[:40]!r}")
    if required and not value.strip():
        raise FieldError(name, "is empty")
    return value


def get_format(kind: str) -> ModuleType:
    """The module for a dataset kind (`DatasetConfig.kind`)."""
    from tuner.data.formats import alpaca, chat_template, completion, input_output, pretokenized, user_defined

    return {
        "alpaca": alpaca,
        "completion": completion,
        "chat_template": chat_template,
        "input_output": input_output,
        "user_defined": user_defined,
        "pretokenized": pretokenized,
    }[kind]
