"""Load the raw rows of one `datasets` entry: local json/jsonl/csv/parquet files or a hub id.

Each file is loaded on its own so that errors can name the file and the row in it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tuner.config.schema import FILE_TYPES, DatasetConfig
from tuner.errors import UserError

if TYPE_CHECKING:
    from datasets import Dataset

EXTENSIONS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass
class RawSource:
    """One file (or hub split) of a dataset entry."""

    index: int  # position in `datasets`
    label: str  # file path or hub id, for messages
    file: Path | None  # local file, None for hub data
    file_type: str | None

    def where(self, row: int | None = None) -> str:
        """'datasets[0] (data/x.jsonl), row 17' (rows are 1-based)."""
        text = f"datasets[{self.index}] ({self.label})"
        return text if row is None else f"{text}, row {row + 1}"


def _file_type(path: Path, ds: DatasetConfig, index: int) -> str:
    if ds.ds_type:
        return ds.ds_type
    kind = EXTENSIONS.get(path.suffix.lower())
    if kind is None:
        raise UserError(
            f"datasets[{index}].path: cannot tell the format of {path} from its extension; "
            f"set ds_type to one of {', '.join(FILE_TYPES)}"
        )
    return kind


def local_sources(ds: DatasetConfig, index: int) -> list[RawSource] | None:
    """The local files of a dataset entry, or None when `path` is not local (a hub id)."""
    path = Path(ds.path).expanduser()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        if ds.data_files:
            names = [ds.data_files] if isinstance(ds.data_files, str) else ds.data_files
            files = [path / n for n in names]
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                raise UserError(f"datasets[{index}].data_files: not found: {', '.join(missing)}")
        else:
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in EXTENSIONS and p.is_file())
            if not files:
                raise UserError(
                    f"datasets[{index}].path: the folder {path} holds no .json/.jsonl/.csv/.parquet files"
                )
    elif ds.path.startswith((".", "/", "~")) or os.sep in ds.path and not _hub_like(ds.path) or path.suffix.lower() in EXTENSIONS:
        raise UserError(f"datasets[{index}].path: {ds.path!r} does not exist (looked for {path.resolve()})")
    else:
        return None
    return [RawSource(index, str(f), f, _file_type(f, ds, index)) for f in files]


def _hub_like(text: str) -> bool:
    """'owner/name' with no further slashes looks like a hub id."""
    parts = text.split("/")
    return len(parts) == 2 and all(parts)


def load_source(src: RawSource, ds: DatasetConfig) -> Dataset:
    """Rows of one local file as a `datasets.Dataset` (arrow-backed)."""
    from datasets import load_dataset

    assert src.file is not None
    try:
        return load_dataset(src.file_type, data_files=str(src.file), split="train")
    except Exception as err:  # noqa: BLE001 - pyarrow/datasets raise many types for bad files
        raise UserError(_bad_file_message(src, err)) from None


def load_hub(ds: DatasetConfig, index: int) -> tuple[RawSource, Dataset]:
    from datasets import load_dataset

    src = RawSource(index, f"{ds.path}, split {ds.split}", None, None)
    try:
        data = load_dataset(ds.path, name=ds.name, data_files=ds.data_files, split=ds.split)
    except Exception as err:  # noqa: BLE001
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        hint = " (HF_HUB_OFFLINE is set: only datasets already in the local cache can load)" if offline else ""
        raise UserError(
            f"datasets[{index}].path: {ds.path!r} is not a local file or folder, and loading it as a "
            f"Hugging Face Hub dataset failed{hint}: {first}"
        ) from None
    return src, data


def _bad_file_message(src: RawSource, err: Exception) -> str:
    """Name the line of a JSON Lines file that does not parse, when that is the cause."""
    if src.file_type == "json" and src.file is not None:
        bad = first_bad_json_line(src.file)
        if bad is not None:
            line, why = bad
            return f"{src.where(line - 1)}: not valid JSON ({why})"
    first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
    return f"{src.where()}: cannot read the file as {src.file_type}: {first}"


def first_bad_json_line(path: Path) -> tuple[int, str] | None:
    """(1-based line, reason) of the first line of a JSON Lines file that is not a JSON object."""
    with open(path, "rb") as fh:
        head = fh.read(1).lstrip()
        if head == b"[":  # a JSON array file, not JSON Lines: datasets' message is the best we have
            return None
        fh.seek(0)
        for number, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                return number, f"invalid UTF-8 at byte {err.start}"
            try:
                value = json.loads(text)
            except json.JSONDecodeError as err:
                return number, f"{err.msg} at column {err.colno}"
            if not isinstance(value, dict):
                return number, f"each line must be a JSON object, got {type(value).__name__}"
    return None
