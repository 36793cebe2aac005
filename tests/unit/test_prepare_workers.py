"""The data stage's speed work keeps its results: dataset_num_proc workers give the same rows,
statistics and errors as one process, and the Arrow totals count as labels.trained_count does."""

from __future__ import annotations

import json
import logging

import pytest
from helpers import alpaca_rows, make_config, write_jsonl

from tuner.data import cache, pipeline
from tuner.data.labels import IGNORE, trained_count
from tuner.data.pipeline import SEQUENCE, _totals, prepare, workers_for
from tuner.errors import UserError


def test_workers_for_needs_enough_rows_per_worker():
    assert workers_for(50_000, None) == pipeline.usable_cores()  # default: the usable cores
    assert workers_for(50_000, 4) == 4
    assert workers_for(2 * pipeline.ROWS_PER_WORKER - 1, 4) == 1
    assert workers_for(3 * pipeline.ROWS_PER_WORKER, 8) == 3
    assert workers_for(10, 8) == 1


def _rows(n: int) -> list[dict]:
    rows = alpaca_rows(n)
    rows[7] = {"instruction": "Say nothing.", "input": "", "output": "word " * 200}  # too long for sequence_len 64
    rows[11] = {"instruction": "", "input": "", "output": "x"}  # invalid: empty instruction
    return rows


def _config(tmp_path, base, name, **extra):
    data = write_jsonl(tmp_path / "data.jsonl", _rows(130))
    return make_config(tmp_path, base_model=str(base), datasets=[{"path": str(data), "type": "alpaca"}],
                       dataset_prepared_path=str(tmp_path / name), sequence_len=100, learning_rate=1e-4,
                       num_epochs=1, **{"skip_invalid_rows": True, **extra})


def test_workers_give_the_rows_and_stats_of_one_process(tmp_path, smol_tokenizer, smol_tokenizer_dir, monkeypatch,
                                                        caplog):
    caplog.set_level(logging.INFO, logger="tuner")
    files = [smol_tokenizer_dir / "tokenizer.json"]
    one = prepare(_config(tmp_path, smol_tokenizer_dir, "one"), smol_tokenizer, files)
    monkeypatch.setattr(pipeline, "ROWS_PER_WORKER", 20)
    monkeypatch.setattr(pipeline, "BATCH_ROWS", 7)  # ranges and batches that do not divide the rows evenly
    three = prepare(_config(tmp_path, smol_tokenizer_dir, "three", dataset_num_proc=3), smol_tokenizer, files)
    assert "(130 rows, 3 processes)" in caplog.text  # the forked workers did tokenize
    assert three.train.num_rows == one.train.num_rows == 128
    for column in ("input_ids", "attention_mask", "labels"):
        assert three.train[column] == one.train[column]
    assert three.stats == one.stats
    source = one.stats["sources"][0]
    assert (source["read"], source["kept"], source["too_long"], source["invalid"]) == (130, 128, 1, 1)
    assert source["dropped_examples"]["too_long"] == [8] and source["invalid_examples"][0].startswith("row 12:")


def test_a_bad_row_in_a_worker_names_its_row(tmp_path, smol_tokenizer, smol_tokenizer_dir, monkeypatch):
    monkeypatch.setattr(pipeline, "ROWS_PER_WORKER", 20)
    cfg = _config(tmp_path, smol_tokenizer_dir, "bad", dataset_num_proc=2, excess_length_strategy="raise", skip_invalid_rows=False)
    rows = alpaca_rows(130)
    rows[100]["output"] = "word " * 200
    write_jsonl(tmp_path / "data.jsonl", rows)
    with pytest.raises(UserError, match=r"row 101: is \d+ tokens long, more than sequence_len 100"):
        prepare(cfg, smol_tokenizer, [smol_tokenizer_dir / "tokenizer.json"])


def test_totals_count_as_trained_count(tmp_path):
    from datasets import Dataset

    labels = [[IGNORE, 5, 6], [7, IGNORE, 8], [9], [], [IGNORE, IGNORE], [3, 4, 5, 6]]
    ids = [[1] * len(row) for row in labels]
    rows = Dataset.from_dict({"input_ids": ids, "attention_mask": ids, "labels": labels})
    expected = {"rows": 6, "tokens": sum(map(len, labels)), "trained_tokens": trained_count(labels)}
    assert expected["trained_tokens"] == 2 + 1 + 0 + 0 + 0 + 3
    assert _totals(rows, SEQUENCE) == expected
    picked = rows.select([5, 0])  # an index mapping: the totals of the picked rows only
    assert _totals(picked, SEQUENCE) == {"rows": 2, "tokens": 7, "trained_tokens": 5}
    assert json.dumps(_totals(rows.select([]), SEQUENCE)) == json.dumps({"rows": 0, "tokens": 0, "trained_tokens": 0})


def test_trained_count_of_a_list_row():
    assert trained_count([]) == 0
    assert trained_count([4]) == 0
    assert trained_count([4, IGNORE, 5, IGNORE]) == 1
    assert trained_count((IGNORE, 2, 3)) == 2


def test_totals_are_the_same_a_batch_at_a_time(monkeypatch):
    from datasets import Dataset

    labels = [[IGNORE, 5, 6], [7, IGNORE, 8], [9], [], [IGNORE, IGNORE], [3, 4, 5, 6], [IGNORE, 1]]
    rows = Dataset.from_dict({"input_ids": labels, "attention_mask": labels, "labels": labels})
    whole = _totals(rows, SEQUENCE)
    monkeypatch.setattr(pipeline, "TOTALS_BATCH", 2)  # batches that do not divide the rows evenly
    assert _totals(rows, SEQUENCE) == whole == {"rows": 7, "tokens": 15, "trained_tokens": trained_count(labels)}


def test_batches_hold_a_bounded_amount_of_raw_data(monkeypatch):
    """Long documents go to the tokenizer a few at a time (its output takes ~100 bytes a token)."""
    from datasets import Dataset

    sizes = [10] * 50 + [5000] * 10 + [10] * 40  # short rows, then long ones, then short ones
    raw = Dataset.from_dict({"text": ["x" * n for n in sizes]})
    monkeypatch.setattr(pipeline, "BATCH_BYTES", 12_000)
    batches = list(pipeline._batches(raw, 3, 100))
    assert batches[0][0] == 3 and batches[-1][1] == 100
    assert all(a < b and b == c for (a, b), (c, _) in zip(batches, batches[1:]))  # contiguous, none empty
    assert all(b - a <= pipeline.BATCH_ROWS for a, b in batches)
    assert all(raw.with_format("arrow")[a:b].nbytes <= 12_000 or b - a == 1 for a, b in batches)
    assert max(b - a for a, b in batches) > 40  # short rows still go in large batches
    monkeypatch.setattr(pipeline, "BATCH_BYTES", 100)
    assert [b - a for a, b in pipeline._batches(raw, 50, 53)] == [1, 1, 1]  # one row at the least


def test_rows_are_made_in_a_scratch_folder_that_is_removed(tmp_path, smol_tokenizer, smol_tokenizer_dir):
    cfg = _config(tmp_path, smol_tokenizer_dir, "prepared")
    root = tmp_path / "prepared"
    fp = cache.fingerprint(cfg, "datasets", [smol_tokenizer_dir / "tokenizer.json"],
                           [f"file:{cache.file_sha256(tmp_path / 'data.jsonl')}"], pipeline.templates.resolve(cfg.data, smol_tokenizer))[0]
    stale = root / f".{fp}.scratch-killed"  # what a run killed while preparing left behind
    (stale / "source-0").mkdir(parents=True)
    prepared = prepare(cfg, smol_tokenizer, [smol_tokenizer_dir / "tokenizer.json"])
    assert prepared.fingerprint == fp and prepared.train.num_rows == 128
    assert sorted(p.name for p in root.iterdir()) == [".locks", fp]  # no scratch left, the stale one removed
    assert all(cache_file["filename"].startswith(str(root / fp)) for cache_file in prepared.train.cache_files)
