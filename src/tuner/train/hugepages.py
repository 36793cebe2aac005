"""Transparent huge pages for torch's large CPU buffers (no torch import here: this has to run
before torch allocates its first tensor, which is when torch reads the switch).

torch's CPU allocator gives a buffer of 2 MiB or more 2 MiB alignment and madvise(MADV_HUGEPAGE)
when THP_MEM_ALLOC_ENABLE=1 (c10/core/alloc_cpu.cpp). tuner hands the large blocks a step frees
back to the system (tuner.train.setup.tune_malloc), so every step maps its activations afresh,
and the kernel zeroes each new page at its first touch: with 4 KiB pages that is one page fault
per 4 KiB, a quarter of a LoRA step's CPU time on a 2-core CPU (bench/memory_levers.py); with
huge pages one per 2 MiB. Applied on Linux when the kernel offers THP to madvise callers; a
value the user set is kept, and TUNER_MALLOC=off (glibc's own settings) leaves it unset.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

THP_ENV = "THP_MEM_ALLOC_ENABLE"
THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def prefer_huge_pages() -> bool:
    """Set THP_MEM_ALLOC_ENABLE=1 for this process and its children (unless set already, or
    TUNER_MALLOC=off, or THP is `never` here). True when it is on."""
    if os.environ.get("TUNER_MALLOC", "").strip().lower() in ("0", "off", "no", "false", "glibc", "trim"):
        return False
    if THP_ENV not in os.environ and sys.platform.startswith("linux") and thp_available():
        os.environ[THP_ENV] = "1"
    return os.environ.get(THP_ENV, "0").strip() not in ("", "0")


def thp_available() -> bool:
    """The kernel's THP mode is `always` or `madvise` (the bracketed word of the setting)."""
    try:
        text = THP_SETTING.read_text()
    except OSError:
        return False
    return "[always]" in text or "[madvise]" in text
