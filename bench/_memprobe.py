"""Where a process's memory is, sampled from inside it (standard library only: both the tuner
and the TRL workers import it).

    import _memprobe
    probe = _memprobe.Probe(interval=0.02).start()
    probe.mark("setup done")          # a named sample, for the phases of the run
    ...
    probe.stop(); probe.write(path)   # JSON: the marks and the sample at the peak

Each sample reads /proc/self/status (VmRSS = RssAnon + RssFile + RssShmem; VmHWM, the
kernel's high-water mark) and glibc's `mallinfo2()`:
  heap_in_use   uordblks: bytes in chunks malloc has handed out from its arenas (the heap)
  heap_free     fordblks: bytes of free chunks the arenas keep (allocator retention: freed by
                the program, not given back to the system; resident once they were touched)
  mmapped       hblkhd: bytes of chunks above the mmap threshold, each its own mapping (given
                back to the system as soon as they are freed)
So at the peak: RssFile = the libraries' code and other file-backed pages; RssAnon = heap in
use + the touched part of heap_free + mmapped + what is allocated outside malloc (Python's
small-object arenas, thread stacks). The sampler keeps every sample's numbers small (one
record per sample) and reports the one with the largest VmRSS.
"""

from __future__ import annotations

import ctypes
import json
import threading
import time
from pathlib import Path

FIELDS = ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem")


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


def _mallinfo():
    try:
        fn = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _Mallinfo2
    return fn


_MALLINFO = _mallinfo()


def sample() -> dict[str, float]:
    """One reading, in bytes (and the wall time)."""
    out: dict[str, float] = {"time": time.time()}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key = line.split(":", 1)[0]
            if key in FIELDS:
                out[key] = int(line.split()[1]) * 1024
    except OSError:
        pass
    if _MALLINFO is not None:
        m = _MALLINFO()
        out.update(heap_arena=m.arena, heap_in_use=m.uordblks, heap_free=m.fordblks, mmapped=m.hblkhd)
    return out


class Probe:
    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak: dict[str, float] = {}
        self.marks: list[tuple[str, dict[str, float]]] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Probe:
        self.mark("probe start")
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            s = sample()
            self.samples += 1
            if s.get("VmRSS", 0) >= self.peak.get("VmRSS", -1):
                self.peak = s
            self._stop.wait(self.interval)

    def mark(self, label: str) -> dict[str, float]:
        s = sample()
        self.marks.append((label, s))
        return s

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.mark("probe stop")

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"peak": self.peak, "marks": self.marks, "samples": self.samples,
                                          "interval": self.interval}))
