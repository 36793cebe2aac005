"""Saving what training produced: the final model or adapter, tokenizer, and run record.

Files are written into a temporary folder first and moved into place when complete, and
the run record (`tuner_run.json`) is moved last: its presence means the save finished.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from tuner import __version__
from tuner.config import TunerConfig, dump_config

RUN_RECORD = "tuner_run.json"
CONFIG_COPY = "tuner_config.yml"
LIBRARIES = ("torch", "transformers", "accelerate", "peft", "datasets", "tokenizers", "safetensors", "bitsandbytes")


def library_versions() -> dict[str, str]:
    out = {"tuner": __version__, "python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


@contextmanager
def staged_files(target: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; on success move its files into `target`."""
    target.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".saving-", dir=target))
    try:
        yield tmp
        names = sorted(os.listdir(tmp), key=lambda n: n == RUN_RECORD)  # the record goes last
        for name in names:
            dest = target / name
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            os.replace(tmp / name, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_final(
    model: Any,
    tokenizer: Any,
    cfg: TunerConfig,
    out_dir: Path,
    record: dict[str, Any],
    dtype: Any = None,
) -> None:
    """Save the trained model (or adapter) and tokenizer in HF format, plus the config and run record.

    A fully fine-tuned model is saved in `dtype` (the dtype the base folder stores), so a
    bf16 model in gives a bf16 model out; adapters keep their fp32 weights.
    """
    with staged_files(out_dir) as tmp:
        if dtype is not None and not hasattr(model, "peft_config"):
            model.to(dtype)  # training is over: the model becomes what is saved
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / CONFIG_COPY).write_text(dump_config(cfg), encoding="utf-8")
        full_record = {**record, "versions": library_versions()}
        (tmp / RUN_RECORD).write_text(json.dumps(full_record, indent=2), encoding="utf-8")
