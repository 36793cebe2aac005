"""`type:` given as a mapping: an instruction format of your own.

    type:
      field_instruction: question
      field_output: answer
      format: "<question>{instruction}\n{input}</question>\n"
      no_input_format: "<question>{instruction}</question>\n"
      system_prompt: "Answer briefly."

The prompt (system prompt, then `format` or `no_input_format`) is not trained; the output
and EOS are, exactly as for alpaca.
"""

from __future__ import annotations

from typing import Any

from tuner.config.schema import DatasetConfig, UserDefinedFormat
from tuner.data.formats import Segment, text_field


def _fmt(ds: DatasetConfig) -> UserDefinedFormat:
    assert isinstance(ds.type, UserDefinedFormat)
    return ds.type


def field_names(ds: DatasetConfig) -> tuple[str, ...]:
    f = _fmt(ds)
    return tuple(n for n in (f.field_system, f.field_instruction, f.field_input, f.field_output) if n)


def prompt(row: dict[str, Any], ds: DatasetConfig) -> str:
    f = _fmt(ds)
    instruction = text_field(row, f.field_instruction)
    extra = text_field(row, f.field_input, required=False)
    system = text_field(row, f.field_system, required=False) if f.field_system else ""
    system = system or f.system_prompt
    head = f.system_format.format(system=system) if system else ""
    template = f.format if extra or f.no_input_format is None else f.no_input_format
    return head + template.format(instruction=instruction, input=extra)


def segments(row: dict[str, Any], ds: DatasetConfig) -> list[Segment]:
    return [Segment(prompt(row, ds), train=False), Segment(text_field(row, _fmt(ds).field_output), train=True)]
