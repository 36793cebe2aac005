"""Every YAML config the project ships validates (without loading any model)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuner.config import load_config

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted([*REPO.glob("configs/**/*.yml"), *REPO.glob("examples/**/*.yml")])


def test_there_are_shipped_configs():
    assert len(SHIPPED) >= 3


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(REPO)) for p in SHIPPED])
def test_shipped_config_validates(path, monkeypatch):
    monkeypatch.chdir(REPO)  # configs name files relative to the repository root
    load_config(path)


def test_config_reference_is_up_to_date():
    """docs/config.md is generated from the schema; regenerate with
    `tuner config-schema --format markdown > docs/config.md`."""
    from tuner.config.reference import markdown
    from tuner.config.schema import BLOCKS

    committed = (REPO / "docs" / "config.md").read_text()
    assert committed == markdown(), "docs/config.md is out of date: tuner config-schema --format markdown > docs/config.md"
    for block in BLOCKS.values():
        for key, field in block.model_fields.items():
            assert f"| `{key}` |" in committed
            assert field.description, f"{key} has no description"
