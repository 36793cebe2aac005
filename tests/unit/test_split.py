"""excess_length_strategy: split (completion rows longer than sequence_len become pieces): labels,
boundaries, overlap, packing of the pieces, the counts, and the refusals."""

from __future__ import annotations

import pytest

from helpers import make_config, write_jsonl
from tuner.config import ConfigError
from tuner.data.labels import IGNORE, trained_count
from tuner.data.pack import Batches, packed_batch
from tuner.data.tokenize import split_row


def test_pieces_cover_the_document_without_overlap():
    ids = list(range(100, 123))  # 23 tokens
    pieces = split_row(ids, list(ids), 8)
    assert [p[0] for p in pieces] == [ids[0:8], ids[8:16], ids[16:23]]
    assert all(p[0] == p[1] for p in pieces)  # all trained (a row's first token never is: labels.py)
    assert [len(p[0]) for p in pieces] == [8, 8, 7]


def test_a_document_of_exactly_sequence_len_times_k_has_no_empty_piece():
    ids = list(range(16))
    assert [len(p[0]) for p in split_row(ids, ids, 8)] == [8, 8]
    assert [len(p[0]) for p in split_row(ids, ids, 8, overlap=3)] == [8, 8, 6]  # starts 0, 5, 10


def test_overlap_repeats_context_that_is_not_trained_again():
    ids = list(range(200, 220))  # 20 tokens
    pieces = split_row(ids, list(ids), 8, overlap=3)
    starts = [0, 5, 10, 15]
    assert [p[0] for p in pieces] == [ids[s:s + 8] for s in starts][:3] + [ids[15:20]]
    for k, (piece_ids, labels) in enumerate(pieces):
        if k:
            assert labels[:3] == [IGNORE] * 3 and labels[3:] == piece_ids[3:]
    # every token after the document's first is trained exactly once over all pieces
    trained = [t for piece_ids, labels in pieces for i, t in enumerate(labels) if i > 0 and t != IGNORE]
    assert sorted(trained) == ids[1:]


def test_untrained_positions_stay_untrained():
    ids = list(range(12))
    labels = [IGNORE] * 4 + ids[4:]
    pieces = split_row(ids, labels, 5)
    assert pieces[0][1] == [IGNORE] * 4 + [4]
    assert [lab for _, piece in pieces for lab in piece] == labels


def test_overlap_must_be_below_sequence_len():
    with pytest.raises(ValueError):
        split_row(list(range(10)), list(range(10)), 4, overlap=4)


def test_packed_pieces_never_train_a_first_token_as_a_continuation():
    ids = list(range(300, 318))
    pieces = split_row(ids, list(ids), 8)
    batch = packed_batch([[pieces[1], pieces[2]]], pad_token_id=0)
    labels, positions = batch["labels"][0].tolist(), batch["position_ids"][0].tolist()
    assert positions == list(range(8)) + list(range(2))
    assert labels[0] == IGNORE and labels[8] == IGNORE  # each piece's first token
    assert labels[1:8] == ids[9:16] and labels[9] == ids[17]


def cfg_of(tmp_path, rows, **extra):
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    values = dict(base_model=str(tmp_path), datasets=[{"path": str(data), "type": "completion", **extra.pop("ds", {})}],
                  dataset_prepared_path=str(tmp_path / "prepared"), max_steps=10, learning_rate=1e-3, sequence_len=16)
    values.update(extra)
    return make_config(tmp_path, **values)


LONG = " ".join(f"word{i}" for i in range(57))


def test_prepare_splits_long_completion_rows_and_packs_the_pieces(tmp_path, smol_tokenizer):
    from tuner.data.pipeline import prepare

    whole = smol_tokenizer(LONG)["input_ids"] + [smol_tokenizer.eos_token_id]
    cfg = cfg_of(tmp_path, [{"text": "short one"}, {"text": LONG}], excess_length_strategy="split",
                 ds={"overlap_len": 4}, sample_packing=True)
    prepared = prepare(cfg, smol_tokenizer, [])
    rows = list(prepared.train)
    assert rows[0]["input_ids"] == smol_tokenizer("short one")["input_ids"] + [smol_tokenizer.eos_token_id]
    pieces = [r["input_ids"] for r in rows[1:]]
    assert all(len(p) <= 16 for p in pieces) and len(pieces) == len(split_row(whole, whole, 16, 4))
    assert pieces[0] == whole[:16] and pieces[1] == whole[12:28] and pieces[-1][-1] == smol_tokenizer.eos_token_id
    assert [r["labels"][:4] for r in rows[2:]] == [[IGNORE] * 4] * (len(pieces) - 1)
    [source] = prepared.stats["sources"]
    assert (source["read"], source["kept"], source["split"], source["pieces"]) == (2, 1 + len(pieces), 1, len(pieces))
    assert f"1 longer than sequence_len split into {len(pieces)} pieces" in prepared.summary()
    assert prepared.stats["trained_tokens"] == trained_count(rows[0]["labels"]) + len(whole) - 1

    batches = Batches(prepared.train, 0, 16, packing=True)
    assert len(rows[0]["input_ids"]) + len(pieces[-1]) <= 16  # the tail piece and the short row share a bin
    assert batches.units == len(rows) - 1 and sorted(i for b in batches.bins for i in b) == list(range(len(rows)))
    drop = prepare(cfg_of(tmp_path, [{"text": "short one"}, {"text": LONG}]), smol_tokenizer, [])
    assert drop.train.num_rows == 1 and drop.fingerprint != prepared.fingerprint


def test_split_is_refused_for_types_it_would_cut_apart(tmp_path):
    data = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "x", "output": "y"}])
    with pytest.raises(ConfigError, match="excess_length_strategy.*split cuts the text of type completion rows; "
                                          "datasets\\[1\\] is type alpaca"):
        cfg_of(tmp_path, [{"text": "x"}], excess_length_strategy="split",
               datasets=[{"path": str(data), "type": "completion"}, {"path": str(data), "type": "alpaca"}])


@pytest.mark.parametrize("extra, words", [
    (dict(ds={"overlap_len": 2}), "overlap_len is the overlap of split pieces, but excess_length_strategy is drop"),
    (dict(ds={"overlap_len": 16}, excess_length_strategy="split"), "overlap_len 16 must be less than sequence_len 16"),
])
def test_overlap_len_rules_name_the_key(tmp_path, extra, words):
    with pytest.raises(ConfigError, match=words) as err:
        cfg_of(tmp_path, [{"text": "x"}], **extra)
    assert "datasets[0].overlap_len" in str(err.value) or "datasets.0.overlap_len" in str(err.value)


def test_overlap_len_on_another_type_is_refused(tmp_path):
    data = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "x", "output": "y"}])
    with pytest.raises(ConfigError, match="overlap_len applies to type completion only, not alpaca"):
        make_config(tmp_path, base_model=str(tmp_path), datasets=[{"path": str(data), "type": "alpaca", "overlap_len": 2}],
                    max_steps=1, learning_rate=1e-3)


def test_fingerprint_without_the_new_dataset_keys_is_unchanged(tmp_path):
    from tuner.data.cache import token_keys

    keys = token_keys(cfg_of(tmp_path, [{"text": "x"}]))
    assert "overlap_len" not in keys["datasets"][0] and "weight" not in keys["datasets"][0]
