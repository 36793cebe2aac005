"""Broken rows in every supported file format: an error naming dataset, file, row and
field, or (with `skip_invalid_rows: true`) a counted drop. Nothing is left in the
prepared folder by a failed run."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest

from helpers import REPORTS, make_config
from tuner.data.pipeline import prepare
from tuner.errors import UserError

FORMATS = ("jsonl", "json", "csv", "parquet")
COUNTS = {"rows": 0, "errors named": 0, "rows skipped and counted": 0}


def good_row(i: int) -> dict:
    return {"instruction": f"Task number {i}.", "input": "" if i % 2 else f"context {i}", "output": f"Answer {i}."}


# (kind, field it breaks, how the row looks, formats that can hold it)
BROKEN = {
    "missing_field": ("output", lambda r: {k: v for k, v in r.items() if k != "output"}, ("jsonl", "json", "csv", "parquet")),
    "wrong_type": ("output", lambda r: {**r, "output": 42}, ("jsonl", "json")),
    "empty_string": ("instruction", lambda r: {**r, "instruction": ""}, FORMATS),
    "null_value": ("output", lambda r: {**r, "output": None}, ("jsonl", "json", "parquet")),
    "list_value": ("instruction", lambda r: {**r, "instruction": ["a", "b"]}, ("jsonl", "json")),
}


def write(path: Path, fmt: str, rows: list, raw_lines: dict[int, bytes] | None = None) -> Path:
    if fmt == "jsonl":
        lines = [json.dumps(r, ensure_ascii=False).encode() for r in rows]
        for i, raw in (raw_lines or {}).items():
            lines[i] = raw
        path.write_bytes(b"\n".join(lines) + b"\n")
    elif fmt == "json":
        path.write_text(json.dumps(rows, ensure_ascii=False))
    elif fmt == "csv":
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["instruction", "input", "output"])
            for r in rows:
                writer.writerow([r.get("instruction", ""), r.get("input", ""), r["output"]] if "output" in r else [r["instruction"], r["input"]])
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        cols = {k: [r.get(k) for r in rows] for k in ("instruction", "input", "output")}
        pq.write_table(pa.table(cols), path)
    return path


def run(tmp_path, smol_tokenizer, smol_tokenizer_dir, path, **extra):
    cfg = make_config(
        tmp_path, base_model=str(smol_tokenizer_dir), datasets=[{"path": str(path), "type": "alpaca"}],
        dataset_prepared_path=str(tmp_path / "prepared"), learning_rate=1e-4, num_epochs=1, **extra,
    )
    return prepare(cfg, smol_tokenizer, [smol_tokenizer_dir / "tokenizer.json"])


def assert_nothing_prepared(tmp_path):
    prepared = tmp_path / "prepared"
    assert not prepared.exists() or not [p for p in prepared.iterdir() if p.name != ".locks"]


CASES = [(fmt, kind) for kind, (_, _, fmts) in BROKEN.items() for fmt in fmts]


@pytest.mark.parametrize("fmt, kind", CASES, ids=[f"{f}-{k}" for f, k in CASES])
def test_broken_rows_are_named_or_skipped(tmp_path, smol_tokenizer, smol_tokenizer_dir, fmt, kind):
    field, breaker, _ = BROKEN[kind]
    rng = random.Random(f"{fmt}-{kind}")
    rows = [good_row(i) for i in range(30)]
    bad = sorted(rng.sample(range(30), 3))
    for i in bad:
        rows[i] = breaker(rows[i])
    path = write(tmp_path / f"data.{fmt}", fmt, rows)

    with pytest.raises(UserError) as info:
        run(tmp_path, smol_tokenizer, smol_tokenizer_dir, path)
    message = str(info.value)
    assert f"datasets[0] ({path}), row {bad[0] + 1}: " in message, message
    assert repr(field) in message, message
    assert "Traceback" not in message
    assert_nothing_prepared(tmp_path)
    COUNTS["errors named"] += 1

    prepared = run(tmp_path, smol_tokenizer, smol_tokenizer_dir, path, skip_invalid_rows=True)
    [stats] = prepared.stats["sources"]
    assert stats["invalid"] == 3 and stats["kept"] == 27 and prepared.train.num_rows == 27
    assert [e.split(":")[0] for e in stats["invalid_examples"]] == [f"row {i + 1}" for i in bad]
    assert "dropped 3 invalid" in prepared.summary()
    COUNTS["rows skipped and counted"] += 3
    COUNTS["rows"] += 30


@pytest.mark.parametrize("kind", ["invalid_utf8", "truncated_last_line", "not_an_object", "garbage_line"])
def test_jsonl_lines_that_do_not_parse(tmp_path, smol_tokenizer, smol_tokenizer_dir, kind):
    rows = [good_row(i) for i in range(20)]
    line = {"invalid_utf8": 7, "truncated_last_line": 19, "not_an_object": 4, "garbage_line": 11}[kind]
    raw = {
        "invalid_utf8": json.dumps(rows[7]).encode().replace(b"Task", b"T\xff\xfesk"),
        "truncated_last_line": json.dumps(rows[19]).encode()[:25],
        "not_an_object": b"[1, 2, 3]",
        "garbage_line": b"{this is not json",
    }[kind]
    path = write(tmp_path / "data.jsonl", "jsonl", rows, {line: raw})
    with pytest.raises(UserError) as info:
        run(tmp_path, smol_tokenizer, smol_tokenizer_dir, path)
    assert f"datasets[0] ({path}), row {line + 1}: " in str(info.value)
    assert_nothing_prepared(tmp_path)
    prepared = run(tmp_path, smol_tokenizer, smol_tokenizer_dir, path, skip_invalid_rows=True)
    assert prepared.stats["sources"][0]["invalid"] == 1 and prepared.train.num_rows == 19
    COUNTS["errors named"] += 1
    COUNTS["rows skipped and counted"] += 1
    COUNTS["rows"] += 20


def test_csv_invalid_utf8_and_ragged_rows(tmp_path, smol_tokenizer, smol_tokenizer_dir):
    path = write(tmp_path / "data.csv", "csv", [good_row(i) for i in range(10)])
    lines = path.read_bytes().split(b"\r\n")
    lines[3] = lines[3].replace(b"Task", b"T\xffsk")  # row 3 (line 4)
    lines[6] = lines[6] + b",extra,values"  # row 6
    path.write_bytes(b"\r\n".join(lines))
    with pytest.raises(UserError, match=r"row 3: field 'instruction' is not valid UTF-8"):
        run(tmp_path, smol_tokenizer, smol_tokenizer_dir, path)
    prepared = run(tmp_path, smol_tokenizer, smol_tokenizer_dir, path, skip_invalid_rows=True)
    assert prepared.stats["sources"][0]["invalid"] == 2 and prepared.train.num_rows == 8


def test_numbers_in_csv_are_text(tmp_path, smol_tokenizer, smol_tokenizer_dir):
    rows = [{"instruction": "Add 2 and 2.", "input": "", "output": "4"} for _ in range(3)]
    prepared = run(tmp_path, smol_tokenizer, smol_tokenizer_dir, write(tmp_path / "d.csv", "csv", rows))
    assert prepared.train.num_rows == 3


def test_rows_far_longer_than_sequence_len_are_counted_drops(tmp_path, smol_tokenizer, smol_tokenizer_dir):
    rows = [good_row(i) for i in range(10)]
    rows[2]["output"] = "word " * 2000
    rows[5]["instruction"] = "very " * 3000
    for fmt in FORMATS:
        folder = tmp_path / fmt
        folder.mkdir()
        prepared = run(folder, smol_tokenizer, smol_tokenizer_dir, write(folder / f"long.{fmt}", fmt, rows), sequence_len=128)
        [stats] = prepared.stats["sources"]
        assert stats["too_long"] == 2 and stats["dropped_examples"]["too_long"] == [3, 6]
        assert "2 longer than sequence_len (rows 3, 6)" in prepared.summary()
    with pytest.raises(UserError, match=r"row 3: is \d+ tokens long, more than sequence_len 128"):
        run(tmp_path, smol_tokenizer, smol_tokenizer_dir, write(tmp_path / "long.jsonl", "jsonl", rows),
            sequence_len=128, excess_length_strategy="raise")


def test_missing_column_names_what_the_file_has(tmp_path, smol_tokenizer, smol_tokenizer_dir):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"prompt": "x", "response": "y"}) + "\n" for _ in range(3)))
    with pytest.raises(UserError) as info:
        run(tmp_path, smol_tokenizer, smol_tokenizer_dir, path)
    assert "row 1: field 'instruction' is missing" in str(info.value) and "this file has: prompt, response" in str(info.value)


@pytest.mark.parametrize(
    "path, words",
    [("missing.jsonl", "does not exist"), ("folder_without_data", "holds no .json"), ("data.txt", "set ds_type")],
)
def test_missing_files_and_folders(tmp_path, smol_tokenizer, smol_tokenizer_dir, path, words):
    (tmp_path / "folder_without_data").mkdir()
    (tmp_path / "data.txt").write_text("hello")
    with pytest.raises(UserError, match=words):
        run(tmp_path, smol_tokenizer, smol_tokenizer_dir, tmp_path / path)


def test_report_counts(request):
    """Runs last in this module: every broken-row case above counted what it checked."""
    counting = ("test_broken_rows_are_named_or_skipped", "test_jsonl_lines_that_do_not_parse")
    ran = [item for item in request.session.items if item.module is request.module and item.originalname in counting]
    if len(ran) != len(CASES) + 4:
        pytest.skip("only part of this module was selected: the totals are for all of it")
    assert COUNTS == {"rows": 30 * len(CASES) + 20 * 4, "errors named": len(CASES) + 4,
                      "rows skipped and counted": 3 * len(CASES) + 4}, COUNTS
    REPORTS.append(
        f"bad data: {COUNTS['rows']} rows in {len(FORMATS)} file formats, {COUNTS['errors named']} errors "
        f"naming file/row/field, {COUNTS['rows skipped and counted']} rows skipped and counted"
    )
