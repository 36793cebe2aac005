"""Load the raw rows of one `datasets` entry: local json/jsonl/csv/parquet files or a hub id.

Each file is loaded on its own so that errors can name the file and the row in it, and
every loaded dataset carries a `_row` column: the row's 0-based position in its file.

JSON files go through pyarrow (fast). When pyarrow cannot read a file (a line that is not
JSON, invalid UTF-8, a truncated last line, a column whose type changes between rows), the
file is read again line by line in Python, which finds the bad rows and names them (or
skips and counts them under `skip_invalid_rows`). CSV is always read in Python, as text:
pyarrow would turn a column of numbers into integers.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner import hub
from tuner.config.schema import FILE_TYPES, DatasetConfig
from tuner.data.formats import DatasetFormat, FieldError, get_format
from tuner.errors import UserError

if TYPE_CHECKING:
    from datasets import Dataset

EXTENSIONS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
ROW = "_row"


@dataclass
class RawSource:
    """One file (or hub split) of a dataset entry."""

    index: int  # position in `datasets` (or `test_datasets`)
    label: str  # file path or hub id, for messages
    file: Path | None  # local file, None for hub data
    file_type: str | None
    key: str = "datasets"
    invalid: list[tuple[int, str]] = field(default_factory=list)  # (0-based row, problem), when skipped

    def where(self, row: int | None = None) -> str:
        """'datasets[0] (data/x.jsonl), row 17' (rows are counted from 1)."""
        text = f"{self.key}[{self.index}] ({self.label})"
        return text if row is None else f"{text}, row {row + 1}"


def _file_type(path: Path, ds: DatasetConfig, where: str) -> str:
    if ds.ds_type:
        return ds.ds_type
    kind = EXTENSIONS.get(path.suffix.lower())
    if kind is None:
        raise UserError(
            f"{where}.path: cannot tell the format of {path} from its extension; "
            f"set ds_type to one of {', '.join(FILE_TYPES)}"
        )
    return kind


def local_sources(ds: DatasetConfig, index: int, key: str = "datasets") -> list[RawSource] | None:
    """The local files of a dataset entry, or None when `path` is not local (a hub id)."""
    where = f"{key}[{index}]"
    path = Path(ds.path).expanduser()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        if ds.data_files:
            names = [ds.data_files] if isinstance(ds.data_files, str) else ds.data_files
            files = [path / n for n in names]
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                raise UserError(f"{where}.data_files: not found: {', '.join(missing)}")
        else:
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in EXTENSIONS and p.is_file())
            if not files:
                raise UserError(
                    f"{where}.path: the folder {path} holds no .json/.jsonl/.csv/.parquet files"
                )
    elif ds.path.startswith((".", "/", "~")) or (os.sep in ds.path and not _hub_like(ds.path)) or path.suffix.lower() in EXTENSIONS:
        raise UserError(f"{where}.path: {ds.path!r} does not exist (looked for {path.resolve()})")
    else:
        return None
    for f in files:
        if not os.access(f, os.R_OK):
            raise UserError(f"{where}.path: {f} is not readable (permissions)")
    return [RawSource(index, str(f), f, _file_type(f, ds, where), key) for f in files]


def _hub_like(text: str) -> bool:
    """'owner/name' with no further slashes looks like a hub id."""
    parts = text.split("/")
    return len(parts) == 2 and all(parts)


def load_source(src: RawSource, ds: DatasetConfig, skip_invalid: bool) -> Dataset:
    """Rows of one local file as a `datasets.Dataset` with a `_row` column."""
    assert src.file is not None
    if src.file_type == "csv":
        return _from_python_rows(src, ds, _csv_rows(src), skip_invalid)
    if src.file_type == "json" and not _is_utf8(src.file):  # pyarrow would accept it, then fail later
        return _from_python_rows(src, ds, _json_rows(src), skip_invalid)
    from datasets import load_dataset

    try:
        data = load_dataset(src.file_type, data_files=str(src.file), split="train")
    except Exception as err:  # noqa: BLE001 - pyarrow/datasets raise many types for bad files
        if src.file_type == "json":
            return _from_python_rows(src, ds, _json_rows(src), skip_invalid)
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise UserError(f"{src.where()}: cannot read the file as {src.file_type}: {first}") from None
    return data.add_column(ROW, list(range(data.num_rows)))


def load_hub(ds: DatasetConfig, index: int, key: str = "datasets") -> tuple[RawSource, Dataset]:
    from datasets import load_dataset

    src = RawSource(index, f"{ds.path}, split {ds.split}", None, None, key)
    try:
        data = load_dataset(ds.path, name=ds.name, data_files=ds.data_files, split=ds.split, revision=ds.revision)
    except Exception as err:  # noqa: BLE001
        offline = hub.offline()
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        hint = " (HF_HUB_OFFLINE is set: only datasets already in the local cache can load)" if offline else ""
        raise UserError(
            f"{key}[{index}].path: {ds.path!r} is not a local file or folder, and loading it as a "
            f"Hugging Face Hub dataset failed{hint}: {first}"
        ) from None
    return src, data.add_column(ROW, list(range(data.num_rows)))


# --------------------------------------------------------------------------- Python readers


def _json_rows(src: RawSource) -> list[tuple[int, dict[str, Any] | str]]:
    """(row, object or problem) for a JSON Lines file, or a JSON array file."""
    assert src.file is not None
    raw = src.file.read_bytes()
    if raw.lstrip()[:1] == b"[":
        try:
            values = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            raise UserError(f"{src.where()}: invalid UTF-8 at byte {err.start}") from None
        except json.JSONDecodeError as err:
            raise UserError(f"{src.where()}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None
        return [(i, v if isinstance(v, dict) else f"must be a JSON object, got {type(v).__name__}") for i, v in enumerate(values)]
    rows: list[tuple[int, dict[str, Any] | str]] = []
    for line in raw.split(b"\n"):
        if not line.strip():
            continue
        index = len(rows)
        try:
            value = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as err:
            rows.append((index, f"invalid UTF-8 at byte {err.start} of the line"))
            continue
        except json.JSONDecodeError as err:
            rows.append((index, f"not valid JSON ({err.msg} at column {err.colno})"))
            continue
        rows.append((index, value if isinstance(value, dict) else f"must be a JSON object, got {type(value).__name__}"))
    return rows


def _csv_rows(src: RawSource) -> list[tuple[int, dict[str, Any] | str]]:
    """(row, fields or problem) for a CSV file with a header line; every value is text."""
    assert src.file is not None
    text = src.file.read_bytes().decode("utf-8", errors="surrogateescape")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows: list[tuple[int, dict[str, Any] | str]] = []
    try:
        for index, record in enumerate(reader):
            bad = [k for k, v in record.items() if isinstance(v, str) and _has_surrogates(v)]
            if None in record:
                rows.append((index, f"has {len(record[None]) + len(reader.fieldnames or [])} values for {len(reader.fieldnames or [])} columns"))
            elif bad:
                rows.append((index, f"field {bad[0]!r} is not valid UTF-8"))
            else:
                rows.append((index, dict(record)))
    except csv.Error as err:
        raise UserError(f"{src.where()}: not valid CSV near line {reader.line_num}: {err}") from None
    return rows


def _is_utf8(path: Path) -> bool:
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def check_row(fmt: DatasetFormat, row: dict[str, Any], ds: DatasetConfig) -> None:
    """The format's own checks of one row (without a tokenizer). Raises FieldError."""
    fmt.check(row, ds)


def _has_surrogates(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def _from_python_rows(
    src: RawSource, ds: DatasetConfig, rows: list[tuple[int, dict[str, Any] | str]], skip_invalid: bool
) -> Dataset:
    """Validate rows read in Python with the dataset type's own field checks; keep its fields."""
    from datasets import Dataset

    fmt = get_format(ds)
    fields = fmt.field_names(ds)
    kept: list[dict[str, Any]] = []
    for index, value in rows:
        problem = value if isinstance(value, str) else None
        if problem is None:
            try:
                check_row(fmt, value, ds)
            except FieldError as err:
                problem = str(err)
        if problem is not None:
            if not skip_invalid:
                raise UserError(f"{src.where(index)}: {problem}")
            src.invalid.append((index, problem))
            continue
        kept.append({**{name: value.get(name) for name in fields}, ROW: index})
    if not kept:
        return Dataset.from_dict({**{name: [] for name in fields}, ROW: []})
    return Dataset.from_list(kept)
