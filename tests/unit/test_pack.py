"""Packing: bins, collated shapes, position_ids and labels at document boundaries, steps."""

from __future__ import annotations

import random

import pytest
import torch

from tuner.config.schema import TrainingBlock
from tuner.data.pack import Batches, pack_rows, packed_batch, pad_batch
from tuner.data.tokenize import IGNORE
from tuner.train.step_plan import StepPlan


def test_bins_hold_every_row_once_within_capacity():
    rng = random.Random(0)
    lengths = [rng.randint(5, 500) for _ in range(2000)]
    bins = pack_rows(lengths, 512)
    assert sorted(i for b in bins for i in b) == list(range(2000))
    assert all(sum(lengths[i] for i in b) <= 512 for b in bins)
    efficiency = sum(lengths) / (len(bins) * 512)
    lower_bound = -(-sum(lengths) // 512)
    assert len(bins) <= 1.05 * lower_bound, (len(bins), lower_bound)  # near-optimal
    assert efficiency > 0.9


def test_bins_are_deterministic_and_refuse_oversized_rows():
    assert pack_rows([3, 5, 2, 7], 10) == pack_rows([3, 5, 2, 7], 10)
    with pytest.raises(ValueError):
        pack_rows([11], 10)


def test_packed_batch_boundaries():
    docs = [[([10, 11, 12], [IGNORE, 11, 12]), ([20, 21], [20, 21])], [([30, 31, 32, 33, 34], [30, 31, 32, 33, 34])]]
    b = packed_batch(docs, pad_token_id=0)
    assert b["input_ids"].tolist() == [[10, 11, 12, 20, 21], [30, 31, 32, 33, 34]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 3, 4]]
    # The first token of every document is never a target (label -100), even if trained alone.
    assert b["labels"].tolist() == [[IGNORE, 11, 12, IGNORE, 21], [IGNORE, 31, 32, 33, 34]]
    assert "attention_mask" not in b


def test_packed_tail_padding_is_its_own_document():
    b = packed_batch([[([1, 2], [1, 2])], [([3, 4, 5, 6], [3, 4, 5, 6])]], pad_token_id=9, pad_to_multiple_of=8)
    assert b["input_ids"].shape == (2, 8)
    assert b["input_ids"][0].tolist() == [1, 2, 9, 9, 9, 9, 9, 9]
    assert b["position_ids"][0].tolist() == [0, 1, 0, 1, 2, 3, 4, 5]
    assert (b["labels"][0, 2:] == IGNORE).all()


def test_padding_to_longest_multiple_or_sequence_len():
    ids, labels = [[1, 2, 3], [4]], [[1, 2, 3], [4]]
    assert pad_batch(ids, labels, 0)["input_ids"].shape == (2, 3)
    assert pad_batch(ids, labels, 0, pad_to_multiple_of=8)["input_ids"].shape == (2, 8)
    assert pad_batch(ids, labels, 0, pad_to=16)["input_ids"].shape == (2, 16)


class FakeRows(dict):
    def __getitem__(self, key):
        if isinstance(key, list):
            return {k: [v[i] for i in key] for k, v in self.items()}
        return super().__getitem__(key)


def test_steps_per_epoch_come_from_the_bins():
    rng = random.Random(1)
    ids = [[7] * rng.randint(10, 120) for _ in range(100)]
    rows = FakeRows(input_ids=ids, labels=ids)
    packed = Batches(rows, 0, 256, packing=True)
    plain = Batches(rows, 0, 256)
    assert plain.units == 100 and packed.units < 45
    t = TrainingBlock(learning_rate=1e-4, num_epochs=1, micro_batch_size=2, gradient_accumulation_steps=2)
    assert StepPlan.build(packed.units, t, 1).steps_per_epoch == -(-packed.units // 4)
    units = list(range(packed.units))
    assert packed.tokens(units) == sum(len(x) for x in ids)
    batch = packed.batch([0, 1])
    real = sum(len(ids[i]) for u in (0, 1) for i in packed.bins[u])
    assert int((batch["input_ids"] == 7).sum()) == real
    assert packed.efficiency == pytest.approx(sum(len(x) for x in ids) / (packed.units * 256))
    assert torch.equal(batch["position_ids"][:, 0], torch.zeros(2, dtype=torch.long))
