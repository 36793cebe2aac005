"""pretraining_dataset: a local corpus streamed, tokenized and packed into full rows; determinism,
exact resume from the saved position, disjoint parts for two processes, and the config rules."""

from __future__ import annotations

import json

import pytest

from helpers import make_config, write_jsonl
from tuner.config import ConfigError
from tuner.data import stream as streaming
from tuner.data.labels import IGNORE
from tuner.data.pack import packed_batch
from tuner.data.stream import StreamBatches, TokenStream, open_stream, stream_data

SEQ = 24


def doc(shard, i):
    return f"shard {shard} document {i}: " + " ".join(f"w{(shard * 7 + i * 3 + k) % 50}" for k in range(i % 9 + 1))


@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "corpus"
    for shard in range(4):
        write_jsonl(folder / f"part-{shard}.jsonl", [{"text": doc(shard, i), "id": f"{shard}-{i}"} for i in range(30)])
    return folder


def cfg_of(tmp_path, spec, **extra):
    values = dict(base_model=str(tmp_path), pretraining_dataset=[spec], max_steps=4, micro_batch_size=2,
                  learning_rate=1e-3, sequence_len=SEQ)
    values.update(extra)
    return make_config(tmp_path, **values)


def stream_of(tmp_path, tok, spec, rank=0, world_size=1):
    return stream_data(cfg_of(tmp_path, spec), tok, [], rank, world_size).train


def test_rows_are_full_and_lay_the_documents_end_to_end(tmp_path, corpus, smol_tokenizer):
    stream = stream_of(tmp_path, smol_tokenizer, {"path": str(corpus)})
    rows = [stream.next_row() for _ in range(20)]
    assert all(sum(len(ids) for ids, _ in row) == SEQ for row in rows)
    laid = [t for row in rows for ids, _ in row for t in ids]
    texts = [doc(0, i) for i in range(30)]  # the first shard comes first
    expected = [t for text in texts for t in smol_tokenizer(text)["input_ids"] + [smol_tokenizer.eos_token_id]]
    assert laid == expected[:len(laid)]
    batch = packed_batch(rows[:2], pad_token_id=0)
    for r, row in enumerate(rows[:2]):
        at = 0
        for ids, _ in row:  # every piece: positions restart, its first token untrained, the rest trained
            assert batch["position_ids"][r, at:at + len(ids)].tolist() == list(range(len(ids)))
            assert batch["labels"][r, at].item() == IGNORE
            assert batch["labels"][r, at + 1:at + len(ids)].tolist() == ids[1:]
            at += len(ids)


def test_the_same_corpus_streams_the_same_rows(tmp_path, corpus, smol_tokenizer):
    a = stream_of(tmp_path, smol_tokenizer, {"path": str(corpus)})
    b = stream_of(tmp_path, smol_tokenizer, {"path": str(corpus)})
    assert [a.next_row() for _ in range(15)] == [b.next_row() for _ in range(15)]


@pytest.mark.parametrize("served", [0, 1, 5, 9, 23])
def test_a_stream_resumed_from_its_state_serves_the_same_tokens(tmp_path, corpus, smol_tokenizer, monkeypatch, served):
    monkeypatch.setattr(streaming, "DOCS_PER_BATCH", 4)  # many batch boundaries
    first = stream_of(tmp_path, smol_tokenizer, {"path": str(corpus)})
    for _ in range(served):
        first.next_row()
    state = json.loads(json.dumps(first.state_dict()))  # as the checkpoint stores it
    expected = [first.next_row() for _ in range(12)]
    resumed = stream_of(tmp_path, smol_tokenizer, {"path": str(corpus)})
    resumed.load_state_dict(state)
    assert resumed.rows_served == served
    assert [resumed.next_row() for _ in range(12)] == expected


def ids_of(spec, rank, world_size):
    return [row["id"] for row in open_stream(spec, rank, world_size)]


@pytest.mark.parametrize("shards", [4, 3])  # whole shards per process; every other row
def test_two_processes_read_disjoint_parts_of_the_corpus(tmp_path, corpus, shards):
    for extra in sorted(corpus.iterdir())[shards:]:
        extra.unlink()
    spec = cfg_of(tmp_path, {"path": str(corpus)}).data.pretraining_dataset[0]
    zero, one = ids_of(spec, 0, 2), ids_of(spec, 1, 2)
    assert not set(zero) & set(one) and len(zero) + len(one) == 30 * shards
    assert abs(len(zero) - len(one)) <= 30


def test_two_processes_pack_different_tokens(tmp_path, corpus, smol_tokenizer):
    zero = stream_of(tmp_path, smol_tokenizer, {"path": str(corpus)}, 0, 2)
    one = stream_of(tmp_path, smol_tokenizer, {"path": str(corpus)}, 1, 2)
    assert zero.next_row() != one.next_row()
    one.next_row()
    with pytest.raises(Exception, match="process 0 of 2, not 1 of 2"):
        one.load_state_dict(zero.state_dict())


def test_parquet_files_data_files_and_skip(tmp_path, corpus, smol_tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "pq"
    folder.mkdir()
    for shard in range(2):
        pq.write_table(pa.table({"body": [doc(shard, i) for i in range(10)]}), folder / f"p{shard}.parquet")
    spec = {"path": str(folder), "text_column": "body", "data_files": ["p1.parquet"], "skip": 3}
    stream = stream_of(tmp_path, smol_tokenizer, spec)
    first = stream.next_row()[0][0]
    assert first == (smol_tokenizer(doc(1, 3))["input_ids"] + [smol_tokenizer.eos_token_id])[:len(first)]
    single = stream_of(tmp_path, smol_tokenizer, {"path": str(corpus / "part-2.jsonl")})
    assert single.next_row()[0][0] == (smol_tokenizer(doc(2, 0))["input_ids"] + [smol_tokenizer.eos_token_id])[:SEQ]


def test_stream_batches_take_rows_in_stream_order(tmp_path, corpus, smol_tokenizer):
    cfg = cfg_of(tmp_path, {"path": str(corpus)}, gradient_accumulation_steps=3)
    data = stream_data(cfg, smol_tokenizer, [], 0, 1)
    batches = StreamBatches.of(data.train, cfg, smol_tokenizer.pad_token_id)
    assert batches.units == data.rows == 4 * 3 * 2 and data.train.num_rows == 24
    reference = stream_data(cfg, smol_tokenizer, [], 0, 1).train
    batch = batches.batch([5, 2])
    assert batch["input_ids"].shape == (2, SEQ) and batches.tokens([5, 2]) == 2 * SEQ
    assert batch["input_ids"][1].tolist() == [t for ids, _ in [reference.next_row(), reference.next_row()][1] for t in ids]
    assert "streaming" in data.summary() and "24 packed rows of 24 tokens" in data.summary()


def test_missing_column_and_a_short_corpus_are_errors_that_say_so(tmp_path, corpus, smol_tokenizer):
    with pytest.raises(Exception, match="no column 'body'.*they have: text, id"):
        stream_of(tmp_path, smol_tokenizer, {"path": str(corpus), "text_column": "body"}).next_row()
    tiny = write_jsonl(tmp_path / "tiny.jsonl", [{"text": "just a few words"}])
    stream = stream_of(tmp_path, smol_tokenizer, {"path": str(tiny)})
    with pytest.raises(Exception, match="the corpus ran out after 0 rows of 24 tokens on process 0; lower max_steps"):
        stream.next_row()


@pytest.mark.parametrize("extra, words", [
    (dict(max_steps=None, num_epochs=1), "max_steps.*pretraining_dataset streams a corpus"),
    (dict(datasets=[{"path": "x.jsonl", "type": "completion"}]), "datasets and pretraining_dataset are both set"),
    (dict(val_set_size=0.1), "val_set_size.*not supported yet"),
])
def test_stream_rules_name_the_key(tmp_path, corpus, extra, words):
    if "datasets" in extra:
        write_jsonl(tmp_path / "x.jsonl", [{"text": "a"}])
        extra["datasets"][0]["path"] = str(tmp_path / "x.jsonl")
    with pytest.raises(ConfigError, match=words):
        cfg_of(tmp_path, {"path": str(corpus)}, **extra)


def test_a_config_without_data_says_what_to_add(tmp_path):
    with pytest.raises(ConfigError, match="datasets: required key is missing.*or pretraining_dataset"):
        make_config(tmp_path, base_model=str(tmp_path), max_steps=1, learning_rate=1e-3)


def test_axolotls_pretraining_keys_validate(tmp_path, corpus):
    cfg = cfg_of(tmp_path, {"path": str(corpus), "name": None, "type": "pretrain", "split": "train",
                            "text_column": "text", "skip": 2})
    assert cfg.data.pretraining_dataset[0].skip == 2 and cfg.data.datasets == []
    assert not [n for n in cfg.notices if "pretraining_dataset" in n.key]


def test_preprocess_and_inspect_say_a_stream_has_no_prepared_rows(tmp_path, corpus, smol_tokenizer):
    from tuner.data.pipeline import prepare
    from tuner.errors import UserError

    with pytest.raises(UserError, match="streamed, tokenized and packed while `tuner train` runs"):
        prepare(cfg_of(tmp_path, {"path": str(corpus)}), smol_tokenizer, [])


def test_prepared_data_keys_a_stream_does_not_use_are_reported(tmp_path, corpus):
    cfg = cfg_of(tmp_path, {"path": str(corpus)}, sample_packing=False, shuffle_merged_datasets=True,
                 excess_length_strategy="truncate", train_on_inputs=True)
    reported = {n.key.split(" ")[0]: n.message for n in cfg.notices if n.kind == "not applied"}
    assert reported["sample_packing"].endswith("always packed into full sequence_len rows")
    assert "read in its order" in reported["shuffle_merged_datasets"]
    assert "continues in the next row" in reported["excess_length_strategy"]
    assert "train_on_inputs" not in reported  # true is what a stream does
    quiet = cfg_of(tmp_path, {"path": str(corpus)}, sample_packing=True)
    assert not [n for n in quiet.notices if n.kind == "not applied"]


def test_inspect_shows_the_first_packed_rows_of_a_stream(tmp_path, corpus, smol_tokenizer):
    from tuner.data.inspect import stream_report

    text = stream_report(cfg_of(tmp_path, {"path": str(corpus)}), smol_tokenizer, 2, colour=False)
    assert "--- row 1: 24 tokens in" in text and "--- row 2: 24 tokens in" in text
    assert "\nsh|[ard]|[ ]|[0]|[ document]" in text  # a document's first token untrained, the rest [bracketed]
    assert "pretraining_dataset: streaming" in text


def test_hub_loading_scripts_are_refused_before_any_download(tmp_path, smol_tokenizer):
    from tuner.errors import UserError

    with pytest.raises(UserError, match="trust_remote_code: the installed datasets library runs no dataset loading"):
        stream_of(tmp_path, smol_tokenizer, {"path": "someone/corpus", "trust_remote_code": True})
