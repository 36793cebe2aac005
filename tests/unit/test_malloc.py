"""tuner.train.malloc: glibc's default while memory is plentiful, the fixed mmap threshold
once it is short, and the TUNER_MALLOC switch for measurements."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch

from tuner.train import malloc


@pytest.fixture
def clean_env(monkeypatch):
    for key in ("TUNER_MALLOC", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
                "GLIBC_TUNABLES"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(malloc, "_glibc", lambda: True)
    return monkeypatch


@pytest.mark.parametrize("value, mode", [("", "auto"), ("auto", "auto"), ("off", "off"), ("0", "off"),
                                         ("on", str(malloc.MMAP_THRESHOLD)), ("4194304", "4194304"),
                                         ("trim", "trim")])
def test_modes(clean_env, value, mode):
    clean_env.setenv("TUNER_MALLOC", value)
    assert malloc.malloc_mode() == mode


def test_the_users_own_malloc_settings_win(clean_env):
    clean_env.setenv("TUNER_MALLOC", "on")
    clean_env.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert malloc.malloc_mode() == "off"
    clean_env.delenv("MALLOC_MMAP_THRESHOLD_")
    clean_env.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536")
    assert malloc.malloc_mode() == "off"
    clean_env.setattr(malloc, "_glibc", lambda: False)  # musl and others: nothing to tune
    clean_env.delenv("GLIBC_TUNABLES")
    assert malloc.malloc_mode() == "off"


def _guarded(monkeypatch, available: list[int], total: int):
    fixed: list[int] = []
    monkeypatch.setattr(malloc, "available_memory", lambda: (available[0], total))
    monkeypatch.setattr(malloc, "fix_mmap_threshold", lambda threshold=malloc.MMAP_THRESHOLD: fixed.append(threshold)
                        or True)
    module = torch.nn.Linear(2, 2)
    malloc.watch(module, "auto")
    return module, fixed


def test_guard_keeps_glibc_default_while_memory_is_plentiful_and_fixes_it_once_short(monkeypatch, caplog):
    available = [60]
    module, fixed = _guarded(monkeypatch, available, total=100)
    x = torch.ones(1, 2)
    out = module(x)
    assert fixed == [] and torch.equal(out, module(x))  # plentiful: nothing changed, the output untouched
    available[0] = 20  # below a quarter
    with caplog.at_level(logging.WARNING, logger="tuner"):
        module(x)
        module(x)
    assert fixed == [malloc.MMAP_THRESHOLD]  # once
    assert "memory is short" in caplog.text and caplog.text.count("memory is short") == 1


def test_trim_hook_leaves_the_output_alone():
    module = torch.nn.Linear(2, 2)
    x = torch.ones(1, 2)
    before = module(x)
    malloc.watch(module, "trim")
    assert torch.equal(module(x), before)


def test_cgroup_limit_counts_when_lower(monkeypatch):
    import psutil

    class VM:
        available, total = 50 << 30, 64 << 30

    monkeypatch.setattr(psutil, "virtual_memory", lambda: VM())
    values = {"/sys/fs/cgroup/memory.max": 8 << 30, "/sys/fs/cgroup/memory.current": 7 << 30}
    monkeypatch.setattr(malloc, "_read_int", values.get)
    assert malloc.available_memory() == (1 << 30, 8 << 30)
    values["/sys/fs/cgroup/memory.max"] = None  # "max": no limit
    assert malloc.available_memory() == (50 << 30, 64 << 30)


def test_fix_mmap_threshold_applies_on_glibc():
    if not malloc._glibc():
        pytest.skip("not glibc")
    code = "from tuner.train.malloc import fix_mmap_threshold; print(fix_mmap_threshold())"  # its own process
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "True"
