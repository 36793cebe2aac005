"""atomic_folder: the previous folder stays in place until the new one replaces it."""

from __future__ import annotations

import os

import pytest

from tuner import fsutil


def write(folder, text):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "f.txt").write_text(text)


def test_replaces_an_existing_folder_and_leaves_nothing_behind(tmp_path):
    final = tmp_path / "out"
    write(final, "old")
    with fsutil.atomic_folder(final) as tmp:
        (tmp / "f.txt").write_text("new")
    assert (final / "f.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_linux_exchanges_in_one_step(tmp_path):
    if not fsutil.exchange(tmp_path, tmp_path):  # probe: not every system has renameat2
        pytest.skip("renameat2 RENAME_EXCHANGE is not available here")
    a, b = tmp_path / "a", tmp_path / "b"
    write(a, "A")
    write(b, "B")
    assert fsutil.exchange(a, b)
    assert (a / "f.txt").read_text() == "B" and (b / "f.txt").read_text() == "A"


def test_an_error_inside_keeps_the_old_folder(tmp_path):
    final = tmp_path / "out"
    write(final, "old")
    with pytest.raises(RuntimeError):
        with fsutil.atomic_folder(final) as tmp:
            (tmp / "f.txt").write_text("half")
            raise RuntimeError("crash while writing")
    assert (final / "f.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_without_exchange_a_crash_between_renames_keeps_the_old_folder(tmp_path, monkeypatch):
    """The fallback renames the old folder aside before moving the new one in: a crash at that
    moment leaves the complete old folder, never no folder at all."""
    final = tmp_path / "out"
    write(final, "old")
    monkeypatch.setattr(fsutil, "exchange", lambda a, b: False)
    real_replace = os.replace
    calls = []

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the old folder has been moved aside; the new one is not in yet
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(fsutil.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        with fsutil.atomic_folder(final) as tmp:
            (tmp / "f.txt").write_text("new")
    kept = [p for p in tmp_path.iterdir() if p.name.startswith(".out.old-")]
    assert len(kept) == 1 and (kept[0] / "f.txt").read_text() == "old"
