"""tuner.train.hugepages: torch's large CPU buffers in transparent huge pages, set before torch
allocates (the measurement is bench/memory_levers.py's thp_off contender)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tuner.train import hugepages


@pytest.fixture
def thp(tmp_path, monkeypatch):
    """A stand-in for the kernel's THP setting, and a clean environment."""
    setting = tmp_path / "enabled"
    monkeypatch.setattr(hugepages, "THP_SETTING", setting)
    monkeypatch.delenv(hugepages.THP_ENV, raising=False)
    monkeypatch.delenv("TUNER_MALLOC", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    return setting


@pytest.mark.parametrize("mode,on", [("always [madvise] never", True), ("[always] madvise never", True),
                                     ("always madvise [never]", False)])
def test_set_when_the_kernel_offers_huge_pages(thp, mode, on):
    thp.write_text(mode + "\n")
    assert hugepages.prefer_huge_pages() is on
    assert os.environ.get(hugepages.THP_ENV) == ("1" if on else None)


def test_no_setting_file_means_off(thp):
    assert hugepages.prefer_huge_pages() is False
    assert hugepages.THP_ENV not in os.environ


def test_a_value_the_user_set_is_kept(thp, monkeypatch):
    thp.write_text("always [madvise] never\n")
    monkeypatch.setenv(hugepages.THP_ENV, "0")
    assert hugepages.prefer_huge_pages() is False
    assert os.environ[hugepages.THP_ENV] == "0"


def test_tuner_malloc_off_leaves_it_unset(thp, monkeypatch):
    thp.write_text("always [madvise] never\n")
    monkeypatch.setenv("TUNER_MALLOC", "off")
    assert hugepages.prefer_huge_pages() is False
    assert hugepages.THP_ENV not in os.environ


def test_the_module_does_not_import_torch():
    code = "import sys, tuner.train.hugepages; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
