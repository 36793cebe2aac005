"""`type: alpaca`: Stanford Alpaca rows (`instruction`, optional `input`, `output`).

The prompt text is Alpaca's, exactly as Axolotl renders it, so rows tokenize to the same
ids as in Axolotl (tests/fixtures/axolotl holds rows Axolotl 0.19 produced). Like Axolotl,
any non-empty input (even whitespace) selects the with-input prompt. The other prompt
styles (`alpaca:chat`, ...) and alpaca's siblings live in `instruct`.
"""

from __future__ import annotations

from typing import Any

from tuner.data.formats.base import register, text_field
from tuner.data.formats.instruct import ALPACA, InstructionFormat, alpaca_style

FORMAT = register(InstructionFormat("alpaca", alpaca_style("instruct"), ALPACA))
segments = FORMAT.segments
# The two prompts with their {instruction} / {input} placeholders (tuner.export.gguf writes them as a chat template).
WITH_INPUT = FORMAT.style.system_format.format(system=FORMAT.style.system) + FORMAT.style.turn
WITHOUT_INPUT = FORMAT.style.system_format.format(system=FORMAT.style.system_no_input) + FORMAT.style.turn_no_input


def prompt(row: dict[str, Any], ds: Any = None) -> str:
    """The prompt of an alpaca row (the text before the trained output)."""
    return FORMAT.style.render(text_field(row, "instruction"), text_field(row, "input", required=False))
