"""glibc's malloc on CPU: fast by default, and memory handed back when memory is short.

The large blocks a training step frees (activations, their gradients) come back from malloc
in one of two ways. glibc's default raises its mmap threshold each time a mapped block is
freed (up to 32 MiB on 64-bit), so blocks of that size then come from the heap, are reused
without touching the kernel, and stay in the heap when freed: the process's RSS grows above
what its tensors hold. A fixed threshold (mallopt M_MMAP_THRESHOLD, the trim threshold with
it) gives each block of 256 KiB and more its own mapping, returned to the system at once, so
RSS follows the tensors; every such block is then faulted in and zeroed again by the kernel.

Measured (bench/memory_levers.py, SmolLM2-135M LoRA, 8 x 512 packed, fp32, quiet machine;
bench/results/memory_levers_each.txt): glibc's default ran 113 tokens/s at a peak RSS of
7,589 MiB (3,432 MiB of it free heap); the fixed threshold 65 tokens/s at 4,420 MiB, with 9x
the page faults. So tuner keeps glibc's default while memory is plentiful, and fixes the
threshold when it is short: `MallocGuard` runs after every forward of the training module
(near the step's peak) and, once less than a quarter of the machine's memory (or of the
cgroup's limit) is available, fixes the threshold and `malloc_trim(0)` returns the heap's free
pages at once. From then on RSS follows the tensors (tuner info's plan). Huge pages for the
fresh mappings (torch's THP_MEM_ALLOC_ENABLE=1) cut the page faults about 5x but did not make
the steps faster (bench/memory_levers.py, thp_on), so they are not set.

Why 256 KiB (it was 1 MiB): in bf16 a small micro-batch's activations fall below 1 MiB (4 x 128
tokens x 576 x 2 B = 576 KiB for SmolLM2), so with a 1 MiB threshold they came from the heap
and its freed chunks stayed resident between the kept ones: a SmolLM2 LoRA step of that size
measured 675-690 MiB above the loaded model against 532-536 with 256 KiB (the plan: 512), 11-13
s against 14 s for its two steps (tests/e2e/test_memory_plan.py's probe, 2026-12-02, AVX512-BF16
CPU). At issue 22's size (8 x 512, bf16) the two thresholds measure the same: 2,654 against
2,637 MiB, 101 against 111 tokens/s (bench/results/memory_levers_threshold_bf16.txt).

`TUNER_MALLOC` (for measurements): unset or "auto": the guard; "off": glibc's own settings
throughout; "on" or a byte count: that threshold (256 KiB for "on") from the start; "trim":
glibc's own thresholds and `malloc_trim(0)` after every forward. Nothing is changed when the
process has its own malloc settings (MALLOC_*_ environment variables or GLIBC_TUNABLES), or
the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("tuner")

MALLOC_ENV = "TUNER_MALLOC"
MMAP_THRESHOLD = 256 << 10  # blocks from 256 KiB up get their own mapping, returned to the system when freed
SHORT_SHARE = 0.25  # memory is short when less than this share of it is available
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
_OFF = ("0", "off", "no", "false", "glibc")


def malloc_mode() -> str:
    """"auto", "off", "trim" or the threshold in bytes (as a string of digits)."""
    wanted = os.environ.get(MALLOC_ENV, "").strip().lower()
    user = [k for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_") if k in os.environ]
    if wanted in _OFF or user or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "") or not _glibc():
        return "off"
    if wanted in ("on", "1", "yes", "true"):
        return str(MMAP_THRESHOLD)
    if wanted.isdigit() or wanted == "trim":
        return wanted
    return "auto"


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold (and the trim threshold at twice it); True when applied."""
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold) and libc.mallopt(_M_TRIM_THRESHOLD, 2 * threshold))
    except (OSError, AttributeError):
        return False


def available_memory() -> tuple[int, int]:
    """(available, total) bytes: the machine's (psutil), or the cgroup's limit when it is lower."""
    import psutil

    vm = psutil.virtual_memory()
    available, total = int(vm.available), int(vm.total)
    limit, current = _read_int("/sys/fs/cgroup/memory.max"), _read_int("/sys/fs/cgroup/memory.current")
    if limit and current is not None and limit < total:
        available, total = min(available, max(limit - current, 0)), limit
    return available, total


class MallocGuard:
    """A forward hook: fixes the mmap threshold once memory is short (the module docstring)."""

    def __init__(self, share: float = SHORT_SHARE):
        self.share = share
        self.fixed = False

    def __call__(self, module: Any, args: Any, output: Any) -> None:  # returns None: the output is unchanged
        if self.fixed:
            return
        available, total = available_memory()
        if available >= self.share * total:
            return
        self.fixed = True
        if fix_mmap_threshold():
            ctypes.CDLL(None).malloc_trim(0)
            log.warning("memory is short (%.1f of %.1f GiB available): freed blocks of 256 KiB and more now go back to "
                        "the system at once (glibc's mmap threshold fixed), slower on CPU but RSS follows the tensors; "
                        "see tuner/train/malloc.py", available / 2**30, total / 2**30)


def start() -> str:
    """At the start of setup: the mode of `malloc_mode`; a fixed threshold is set now."""
    mode = malloc_mode()
    if mode.isdigit():
        fix_mmap_threshold(int(mode))
    return mode


def watch(module: Any, mode: str) -> None:
    """On CPU, once the training module is built: the guard ("auto") or the trim hook ("trim")."""
    if mode == "auto":
        module.register_forward_hook(MallocGuard())
    elif mode == "trim":
        libc = ctypes.CDLL(None)

        def trim(mod: Any, args: Any, output: Any) -> None:  # returns None: the output is unchanged
            libc.malloc_trim(0)

        module.register_forward_hook(trim)


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):  # absent, or "max"
        return None


def _glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (ValueError, OSError, AttributeError):
        return False
