"""Mixtures of datasets: Axolotl's per-dataset `weight`, LLaMA-Factory's mix_strategy /
interleave_probs (realised proportions within 2 points on 10,000 rows), shuffle_merged_datasets:
false, and deduplication across training and evaluation rows."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import make_config, write_jsonl
from tuner.config import ConfigError
from tuner.data.mixture import MixSettings, interleave, mix, subsample
from tuner.data.pack import Batches, pack_in_order
from tuner.train.step_plan import StepPlan


def test_interleave_under_draws_in_proportion_and_stops_at_the_first_exhausted():
    groups = [np.arange(0, 8000), np.arange(8000, 16000)]
    order = interleave(groups, "interleave_under", (0.7, 0.3), seed=3)
    assert len(order) >= 10_000
    first = order[:10_000]
    share = float((first < 8000).mean())
    assert abs(share - 0.7) < 0.02, share
    assert (order < 8000).sum() == 8000  # ended when datasets[0] ran out
    assert np.all(np.diff(order[order < 8000]) == 1) and np.all(np.diff(order[order >= 8000]) == 1)  # in order


def test_interleave_over_repeats_the_smaller_until_every_dataset_is_used():
    groups = [np.arange(0, 9000), np.arange(9000, 10000)]
    order = interleave(groups, "interleave_over", (0.5, 0.5), seed=0)
    assert set(order.tolist()) == set(range(10000))  # everything used at least once
    assert abs(float((order < 9000).mean()) - 0.5) < 0.02
    assert len(order) > 10000  # datasets[1] repeated


def test_interleave_without_probabilities_takes_turns():
    order = interleave([np.array([0, 1, 2]), np.array([10, 11])], "interleave_under", None, seed=0)
    assert order.tolist() == [0, 10, 1, 11, 2]
    order = interleave([np.array([0, 1, 2]), np.array([10, 11])], "interleave_over", None, seed=0)
    assert order.tolist() == [0, 10, 1, 11, 2]


def test_weight_keeps_a_seeded_share_in_order():
    rows = np.arange(1000)
    kept = subsample(rows, 0.25, seed=1)
    assert len(kept) == 250 and np.all(np.diff(kept) > 0)
    assert np.array_equal(kept, subsample(rows, 0.25, seed=1)) and not np.array_equal(kept, subsample(rows, 0.25, 2))
    assert len(subsample(np.arange(3), 0.01, seed=0)) == 1


def test_mix_counts_what_each_dataset_gives():
    dataset_of = np.array([0] * 600 + [1] * 400)
    order, stats = mix(dataset_of, MixSettings((0.5, None), "concat", None, 0), ["a", "b"])
    assert len(order) == 700 and [d["rows"] for d in stats["datasets"]] == [300, 400]
    assert stats["datasets"][0]["kept"] == 300 and stats["datasets"][0]["available"] == 600


def texts(prefix, n):
    return [{"text": f"{prefix} row number {i}"} for i in range(n)]


def cfg_of(tmp_path, sizes, **extra):
    paths = [write_jsonl(tmp_path / f"d{i}.jsonl", texts(f"source{i}", n)) for i, n in enumerate(sizes)]
    ds_extra = extra.pop("ds", [{}] * len(sizes))
    values = dict(base_model=str(tmp_path), datasets=[{"path": str(p), "type": "completion", **e}
                                                      for p, e in zip(paths, ds_extra)],
                  dataset_prepared_path=str(tmp_path / "prepared"), max_steps=10, learning_rate=1e-3, sequence_len=32)
    values.update(extra)
    return make_config(tmp_path, **values)


def test_prepare_mixes_in_proportion_and_inspect_prints_the_realised_shares(tmp_path, smol_tokenizer):
    from tuner.data.pipeline import prepare

    cfg = cfg_of(tmp_path, [6000, 6000], mix_strategy="interleave_under", interleave_probs="0.7,0.3")
    assert cfg.data.interleave_probs == [0.7, 0.3]  # LLaMA-Factory's comma string
    prepared = prepare(cfg, smol_tokenizer, [])
    rows = prepared.train.num_rows
    assert rows >= 8000
    first = [smol_tokenizer.decode(r)[:7] for r in prepared.train.select(range(0, min(rows, 10_000)))["input_ids"]]
    share = first.count("source0") / len(first)
    assert abs(share - 0.7) < 0.02, share
    mixture = prepared.stats["mixture"]
    assert mixture["datasets"][0]["rows"] == 6000 and sum(d["rows"] for d in mixture["datasets"]) == rows
    from tuner.data.inspect import report

    printed = report(prepared, smol_tokenizer, 32, 1, 0, n_rows=0, colour=False)  # what `tuner inspect` prints
    assert "mixture (interleave_under, interleave_probs 0.7, 0.3)" in printed
    assert "(asked 70.0%)" in printed and "(asked 30.0%)" in printed
    concat = prepare(cfg_of(tmp_path, [6000, 6000]), smol_tokenizer, [])
    assert concat.fingerprint != prepared.fingerprint and "mixture" not in concat.stats


def test_weight_subsamples_a_dataset_and_is_reported(tmp_path, smol_tokenizer):
    from tuner.data.pipeline import prepare

    prepared = prepare(cfg_of(tmp_path, [200, 100], ds=[{"weight": 0.5}, {}]), smol_tokenizer, [])
    assert prepared.train.num_rows == 200
    assert "weight 0.5: 100 of 200 rows kept" in prepared.summary()


def test_shuffle_merged_datasets_false_trains_rows_in_the_order_of_datasets(tmp_path):
    cfg = cfg_of(tmp_path, [3, 3], shuffle_merged_datasets=False)
    assert not [n for n in cfg.notices if "shuffle_merged_datasets" in n.key]
    plan = StepPlan.build(10, cfg.training, 1, shuffle=cfg.data.shuffle_merged_datasets)
    assert plan.epoch_order(0) == list(range(10)) and plan.epoch_order(1) == list(range(10))
    assert StepPlan.build(10, cfg.training, 1).epoch_order(0) != list(range(10))
    assert pack_in_order([5, 4, 3, 8, 1], 8) == [[0], [1, 2], [3], [4]]
    rows = {"input_ids": [[1] * n for n in (5, 4, 3, 8, 1)], "labels": [[1] * n for n in (5, 4, 3, 8, 1)]}
    assert Batches(rows, 0, 8, packing=True, in_order=True).bins == [[0], [1, 2], [3], [4]]


def test_evaluation_rows_that_are_training_rows_are_dropped_and_counted(tmp_path, smol_tokenizer):
    from tuner.data.pipeline import prepare

    evaluation = write_jsonl(tmp_path / "eval.jsonl", texts("source0", 2) + [{"text": "only in eval"}])
    cfg = cfg_of(tmp_path, [5], dataset_exact_deduplication=True,
                 test_datasets=[{"path": str(evaluation), "type": "completion"}])
    prepared = prepare(cfg, smol_tokenizer, [])
    assert prepared.eval.num_rows == 1 and prepared.eval_stats["also_in_train"] == 2
    assert prepared.eval_stats["rows"] == 1 and prepared.eval_stats["tokens"] == len(prepared.eval[0]["input_ids"])
    assert "2 rows that are also training rows dropped" in prepared.summary()


@pytest.mark.parametrize("extra, words", [
    (dict(interleave_probs=[0.5, 0.5]), "interleave_probs are the proportions of an interleaved mixture, but "
                                         "mix_strategy is concat"),
    (dict(mix_strategy="interleave_over", interleave_probs=[1.0]), "1 probabilities for 2 datasets"),
    (dict(mix_strategy="interleave_over", interleave_probs=[0.7, 0.7]), "0.7, 0.7 sum to 1.4"),
    (dict(ds=[{"weight": 0}, {}]), "weight"),
    (dict(ds=[{"weight": 1.5}, {}]), "weight"),
])
def test_mixture_mistakes_name_the_key(tmp_path, extra, words):
    with pytest.raises(ConfigError, match=words):
        cfg_of(tmp_path, [2, 2], **extra)
