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
from tuner.data.formats.base import SegmentFormat, register, text_field
from tuner.data.labels import Segment


def _fmt(ds: DatasetConfig | None) -> UserDefinedFormat:
    assert ds is not None and isinstance(ds.type, UserDefinedFormat)
    return ds.type


def _render(f: UserDefinedFormat, instruction: str, extra: str, system: str) -> str:
    system = system or f.system_prompt
    head = f.system_format.format(system=system) if system else ""
    template = f.format if extra or f.no_input_format is None else f.no_input_format
    return head + template.format(instruction=instruction, input=extra)


class UserDefined(SegmentFormat):
    name = "user_defined"

    def field_names(self, ds: DatasetConfig | None) -> tuple[str, ...]:
        f = _fmt(ds)
        return tuple(n for n in (f.field_system, f.field_instruction, f.field_input, f.field_output) if n)

    def segments(self, row: dict[str, Any], ds: DatasetConfig | None = None) -> list[Segment]:
        f = _fmt(ds)
        instruction = text_field(row, f.field_instruction)
        extra = text_field(row, f.field_input, required=False)
        system = text_field(row, f.field_system, required=False) if f.field_system else ""
        return [Segment(_render(f, instruction, extra, system), train=False), Segment(text_field(row, f.field_output), train=True)]

    def prompt(self, text: str, input_text: str, ds: DatasetConfig) -> str:
        return _render(_fmt(ds), text, input_text, "")


FORMAT = register(UserDefined())
