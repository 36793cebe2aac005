"""The dataset-format interface and its registry.

A format turns raw rows of one dataset `type` into token ids and labels. Every format is a
`DatasetFormat` registered under the name a config writes in `type:` (plus two kinds with
no name of their own: `user_defined`, a mapping given as `type`, and `pretokenized`, when
`type` is left out). What a format provides:

    name                          the registry key (`DatasetConfig.kind`)
    field_names(ds)               the row fields it reads (kept when rows are loaded)
    check(row, ds)                the row's own checks, without a tokenizer (FieldError)
    encode_many(rows, ds, ctx)    [(input_ids, labels) | FieldError] per row
    prompt(text, input_text, ds)  the prompt `tuner generate` gives the trained model
    chat                          rows are rendered by a chat template (one is resolved)

Formats made of text pieces (alpaca and Axolotl's other instruction types, completion,
input_output, user-defined) subclass `SegmentFormat`: they only say how a row becomes
`Segment`s, and share one tokenization (`tuner.data.tokenize.encode_segments`).

Which names exist is declared once, in `tuner.config.dataset_types` (config may not import
data, yet validation must know every name): `register` refuses a name not declared there,
and tests/unit/test_formats.py checks that every declared name has a format.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, TypeVar, Union

from tuner.config.dataset_types import KINDS
from tuner.config.schema import DatasetConfig
from tuner.data.labels import Segment
from tuner.data.tokenize import encode_segments
from tuner.errors import UserError

Encoded = tuple[list[int], list[int]]  # (input_ids, labels) of one row, before the length policy


class FieldError(ValueError):
    """A row's field is missing or has the wrong type. Turned into a RowError by the caller."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"field {field!r} {problem}")
        self.field = field


EncodeResult = Union[Encoded, FieldError]


@dataclass(frozen=True)
class EncodeContext:
    """What encoding needs beside the rows: the tokenizer and the policies that change labels."""

    tokenizer: Any
    train_on_inputs: bool = False
    template: str | None = None  # the chat template text, for chat formats
    eot_tokens: tuple[str, ...] | None = None  # tokens that end a turn (None: the template's special tokens)


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


class DatasetFormat(ABC):
    """One dataset `type`: how its rows become (input_ids, labels)."""

    name: str = ""
    chat: bool = False
    rows = "sequence"  # what a prepared row holds: "sequence" (SFT), "pair" or "unpaired" (preference)

    @abstractmethod
    def field_names(self, ds: DatasetConfig | None) -> tuple[str, ...]:
        """The row fields this format reads."""

    @abstractmethod
    def check(self, row: dict[str, Any], ds: DatasetConfig | None) -> None:
        """Raise FieldError when the row cannot be encoded (checked without a tokenizer)."""

    @abstractmethod
    def encode_many(self, rows: list[dict[str, Any]], ds: DatasetConfig | None, ctx: EncodeContext) -> list[EncodeResult]:
        """(input_ids, labels) of each row, or the FieldError of a bad one."""

    def prompt(self, text: str, input_text: str, ds: DatasetConfig) -> str:
        """The prompt a trained model is given for `text` (and `input_text`, for formats with an
        input field). Default: the text as written, since the format has no prompt template."""
        if input_text:
            raise UserError(f"--input: the dataset type of datasets[0] ({self.name}) has no input field; "
                            "put everything in the prompt")
        return text


class SegmentFormat(DatasetFormat):
    """A format whose rows are pieces of text, each trained or not (see tuner.data.tokenize)."""

    special_tokens_first = True  # the first segment gets the tokenizer's special tokens (BOS)
    append_eos = True  # EOS ends the row (trained when the last segment is)
    eos_count = 1  # EOS tokens that end a row

    @abstractmethod
    def segments(self, row: dict[str, Any], ds: DatasetConfig | None = None) -> list[Segment]:
        """The row's segments. Raises FieldError."""

    def check(self, row: dict[str, Any], ds: DatasetConfig | None = None) -> None:
        self.segments(row, ds)

    def encode_many(self, rows: list[dict[str, Any]], ds: DatasetConfig | None, ctx: EncodeContext) -> list[EncodeResult]:
        pieces: list[list[Segment] | FieldError] = []
        for row in rows:
            try:
                pieces.append(self.segments(row, ds))
            except FieldError as err:
                pieces.append(err)
        encoded = iter(encode_segments(
            [p for p in pieces if not isinstance(p, FieldError)], ctx.tokenizer, ctx.train_on_inputs,
            self.special_tokens_first, self.append_eos, self.eos_count,
        ))
        return [p if isinstance(p, FieldError) else next(encoded) for p in pieces]


FORMATS: dict[str, DatasetFormat] = {}
F = TypeVar("F", bound=DatasetFormat)


def register(fmt: F) -> F:
    """Add a format to the registry under its name, which tuner.config.dataset_types must declare."""
    if fmt.name not in KINDS:
        raise RuntimeError(f"dataset format {fmt.name!r} is not declared in tuner.config.dataset_types")
    if fmt.name in FORMATS:
        raise RuntimeError(f"dataset format {fmt.name!r} is registered twice")
    FORMATS[fmt.name] = fmt
    return fmt
