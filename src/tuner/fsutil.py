"""Writing folders so that a crash never leaves a half-written one where a complete one is expected."""

from __future__ import annotations

import ctypes
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


@contextmanager
def atomic_folder(final: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `final`; when the block completes, it takes `final`'s
    place. On any error (or interrupt) the temporary folder is removed and `final` is left as
    it was. The previous `final` is kept until the new one is in place: on Linux the two are
    exchanged in one step (renameat2 RENAME_EXCHANGE); elsewhere the old one is first renamed
    aside (`.NAME.old-PID`, complete), then the new one renamed in, then the old one removed."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        replace_folder(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_folder(new: Path, final: Path) -> None:
    """Put the folder `new` at `final`, replacing what is there without a moment with neither."""
    if not final.exists():
        os.replace(new, final)
        return
    if exchange(new, final):  # `final` now holds the new folder, `new` the old one
        shutil.rmtree(new, ignore_errors=True)
        return
    aside = final.with_name(f".{final.name}.old-{os.getpid()}")
    os.replace(final, aside)
    os.replace(new, final)
    shutil.rmtree(aside, ignore_errors=True)


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0
