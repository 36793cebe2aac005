"""README's generated tables match their generators (one source for defaults and for the keys
reported as not applied)."""

from __future__ import annotations

from pathlib import Path

from tuner.config.reference import (
    DIFFERS,
    SAME_WHEN_UNSET,
    defaults_table,
    not_applied_table,
    section,
    undocumented_defaults,
)
from tuner.config.schema import BLOCKS

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def test_defaults_table_is_generated():
    assert section(README, "defaults") == defaults_table(), "README defaults table: paste defaults_table()"


def test_every_default_that_differs_from_axolotl_is_explained():
    assert undocumented_defaults() == [], "add these keys to reference.DIFFERS (or SAME_WHEN_UNSET)"
    assert not set(DIFFERS) & set(SAME_WHEN_UNSET)
    fields = {k for b in BLOCKS.values() for k in b.model_fields} | {"fsdp_config.fsdp_version"}
    assert set(DIFFERS) <= fields and set(SAME_WHEN_UNSET) <= fields
    assert "| `bf16` | `false` | `auto`" in README  # issue 14: it was missing


def test_not_applied_table_is_generated():
    assert section(README, "not-applied") == not_applied_table()
