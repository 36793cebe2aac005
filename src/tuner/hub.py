"""The Hugging Face Hub settings tuner reads (one place, for models and datasets alike)."""

from __future__ import annotations

import os


def offline() -> bool:
    """HF_HUB_OFFLINE is set: only what is in the local caches can load."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
