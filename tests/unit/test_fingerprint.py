"""The prepared-dataset fingerprint changes exactly when the tokens could change."""

from __future__ import annotations

import json
import shutil

import pytest

import tuner.data.cache as cache
from helpers import alpaca_rows, make_config, write_jsonl
from tuner.data.pipeline import prepare
from tuner.models.load import TOKENIZER_FILES


@pytest.fixture
def setup(tmp_path, smol_tokenizer_dir):
    tok_dir = tmp_path / "tok"
    shutil.copytree(smol_tokenizer_dir, tok_dir)
    data = write_jsonl(tmp_path / "data.jsonl", alpaca_rows(12))

    def fp(**overrides):
        values = dict(
            base_model=str(tok_dir),
            datasets=[{"path": str(data), "type": "alpaca"}],
            dataset_prepared_path=str(tmp_path / "prepared"),
            learning_rate=1e-4,
            num_epochs=1,
        )
        values.update(overrides)
        cfg = make_config(tmp_path, **values)
        files = [tok_dir / n for n in TOKENIZER_FILES if (tok_dir / n).is_file()]
        return cache.fingerprint(cfg, "datasets", files, [f"file:{cache.file_sha256(data)}"])[0]

    return fp, tok_dir, data


def test_unrelated_keys_keep_the_fingerprint(setup):
    fp, _, _ = setup
    base = fp()
    assert fp(learning_rate=3e-4) == base
    assert fp(val_set_size=0.1, seed=7, micro_batch_size=4, output_dir="elsewhere") == base


@pytest.mark.parametrize(
    "change",
    [
        {"sequence_len": 256},
        {"train_on_inputs": True},
        {"excess_length_strategy": "truncate"},
        {"tokens": ["<extra>"]},
        {"special_tokens": {"pad_token": "<|endoftext|>"}},
    ],
)
def test_token_keys_change_the_fingerprint(setup, change):
    fp, _, _ = setup
    assert fp(**change) != fp()


def test_dataset_entry_changes_the_fingerprint(setup, tmp_path):
    fp, _, data = setup
    assert fp(datasets=[{"path": str(data), "type": "completion", "field": "output"}]) != fp()


def test_data_file_contents_change_the_fingerprint(setup):
    fp, _, data = setup
    before = fp()
    write_jsonl(data, alpaca_rows(12)[:-1])
    assert fp() != before


def test_tokenizer_file_contents_change_the_fingerprint(setup):
    fp, tok_dir, _ = setup
    before = fp()
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    config["model_max_length"] = 4096
    (tok_dir / "tokenizer_config.json").write_text(json.dumps(config))
    assert fp() != before


def test_tuner_version_changes_the_fingerprint(setup, monkeypatch):
    fp, _, _ = setup
    before = fp()
    monkeypatch.setattr(cache, "__version__", "999.0")
    assert fp() != before


def test_prepare_reuses_then_rebuilds(tmp_path, smol_tokenizer, smol_tokenizer_dir):
    data = write_jsonl(tmp_path / "data.jsonl", alpaca_rows(12))
    values = dict(
        base_model=str(smol_tokenizer_dir),
        datasets=[{"path": str(data), "type": "alpaca"}],
        dataset_prepared_path=str(tmp_path / "prepared"),
        learning_rate=1e-4,
        num_epochs=1,
    )
    files = [smol_tokenizer_dir / "tokenizer.json"]
    first = prepare(make_config(tmp_path, **values), smol_tokenizer, files)
    assert not first.reused and first.train.num_rows == 12
    again = prepare(make_config(tmp_path, **{**values, "learning_rate": 5e-4}), smol_tokenizer, files)
    assert again.reused and again.fingerprint == first.fingerprint
    assert again.train["input_ids"] == first.train["input_ids"]
    other = prepare(make_config(tmp_path, **{**values, "sequence_len": 64}), smol_tokenizer, files)
    assert not other.reused and other.fingerprint != first.fingerprint
    # A corrupted prepared folder is rebuilt, not used.
    (first.path / cache.META).write_text("{not json")
    rebuilt = prepare(make_config(tmp_path, **values), smol_tokenizer, files)
    assert not rebuilt.reused and rebuilt.train["labels"] == first.train["labels"]
    # So is a partial one (rows missing) and one whose row count disagrees with meta.json.
    import shutil

    shutil.rmtree(rebuilt.path / cache.ROWS)
    again = prepare(make_config(tmp_path, **values), smol_tokenizer, files)
    assert not again.reused and again.train.num_rows == 12
    meta = json.loads((again.path / cache.META).read_text())
    meta["stats"]["rows"] = 11
    (again.path / cache.META).write_text(json.dumps(meta))
    assert not prepare(make_config(tmp_path, **values), smol_tokenizer, files).reused
    # Leftover temporary folders from a crash are never mistaken for prepared data.
    assert not [p for p in (tmp_path / "prepared").iterdir() if p.name.startswith(".") and p.name != ".locks"]


def test_val_split_is_deterministic_and_disjoint(tmp_path, smol_tokenizer, smol_tokenizer_dir):
    data = write_jsonl(tmp_path / "data.jsonl", alpaca_rows(40))
    values = dict(
        base_model=str(smol_tokenizer_dir),
        datasets=[{"path": str(data), "type": "alpaca"}],
        dataset_prepared_path=str(tmp_path / "prepared"),
        learning_rate=1e-4,
        num_epochs=1,
        val_set_size=0.25,
    )
    files = [smol_tokenizer_dir / "tokenizer.json"]
    a = prepare(make_config(tmp_path, **values), smol_tokenizer, files)
    b = prepare(make_config(tmp_path, **values), smol_tokenizer, files)
    assert a.eval.num_rows == 10 and a.train.num_rows == 30
    assert a.eval["input_ids"] == b.eval["input_ids"]
    train_set = {tuple(x) for x in a.train["input_ids"]}
    assert not any(tuple(x) in train_set for x in a.eval["input_ids"])
    count = prepare(make_config(tmp_path, **{**values, "val_set_size": 5}), smol_tokenizer, files)
    assert count.eval.num_rows == 5
