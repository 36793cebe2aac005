"""`type: alpaca`: Stanford Alpaca rows (`instruction`, optional `input`, `output`).

The prompt text is Alpaca's, exactly as Axolotl renders it, so rows tokenize to the same
ids as in Axolotl (tests/fixtures/axolotl holds rows Axolotl 0.19 produced).
"""

from __future__ import annotations

from typing import Any

from tuner.config.schema import DatasetConfig
from tuner.data.formats import Segment, text_field

FIELDS = ("instruction", "input", "output")

WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
WITHOUT_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


def field_names(ds: DatasetConfig | None = None) -> tuple[str, ...]:
    return FIELDS


def prompt(row: dict[str, Any], ds: DatasetConfig | None = None) -> str:
    instruction = text_field(row, "instruction")
    extra = text_field(row, "input", required=False)
    if extra:  # like Axolotl: any non-empty input (even whitespace) selects the input form
        return WITH_INPUT.format(instruction=instruction, input=extra)
    return WITHOUT_INPUT.format(instruction=instruction)


def segments(row: dict[str, Any], ds: DatasetConfig | None = None) -> list[Segment]:
    return [Segment(prompt(row, ds), train=False), Segment(text_field(row, "output"), train=True)]
