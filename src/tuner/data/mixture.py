"""Mixtures of `datasets`: a per-dataset `weight` (Axolotl's: the share of a dataset's rows
used) and `mix_strategy` / `interleave_probs` (LLaMA-Factory's: how the datasets are merged).

Both act on prepared rows, after tokenization, filtering and deduplication, and before the
evaluation split; the mixture is what is cached (its settings and the seed are in the
fingerprint), and its realised proportions are in the statistics `tuner inspect` prints.

  * `weight: w` keeps a seeded random `round(w * rows)` of the dataset's rows (at least one),
    in their order.
  * `mix_strategy: concat` (default): every kept row of every dataset, in the order of `datasets`.
  * `interleave_under`: each next row comes from a dataset drawn with `interleave_probs`
    (default: the datasets in turn, as 🤗 datasets' interleave_datasets without
    probabilities), taking that dataset's rows in order; the mixture ends when a drawn
    dataset has no rows left (datasets' "first_exhausted").
  * `interleave_over`: the same draws, but an exhausted dataset starts again from its first
    row, until every dataset (of probability > 0) has been used once ("all_exhausted").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tuner.config.schema import TunerConfig
from tuner.errors import UserError

DRAWS = 1 << 16  # dataset draws made at a time


@dataclass(frozen=True)
class MixSettings:
    weights: tuple[float | None, ...]  # per entry of `datasets`
    strategy: str  # concat | interleave_under | interleave_over
    probs: tuple[float, ...] | None
    seed: int

    @classmethod
    def of(cls, cfg: TunerConfig) -> MixSettings:
        d = cfg.data
        return cls(tuple(ds.weight for ds in d.datasets), d.mix_strategy,
                   tuple(d.interleave_probs) if d.interleave_probs is not None else None, cfg.training.seed)

    @property
    def active(self) -> bool:
        return self.strategy != "concat" or any(w is not None for w in self.weights)


def subsample(rows: np.ndarray, weight: float | None, seed: int) -> np.ndarray:
    """A seeded random `round(weight * len)` of `rows` (at least one), in their order."""
    if weight is None or weight >= 1 or len(rows) == 0:
        return rows
    keep = max(1, round(weight * len(rows)))
    picked = np.random.default_rng(seed).permutation(len(rows))[:keep]
    return rows[np.sort(picked)]


def interleave(groups: list[np.ndarray], strategy: str, probs: tuple[float, ...] | None, seed: int) -> np.ndarray:
    """The rows of `groups` (one array of row indices per dataset) merged by `strategy`."""
    k = len(groups)
    live = [i for i in range(k) if probs is None or probs[i] > 0]
    cursor = [0] * k
    rng = np.random.default_rng(seed)
    out: list[int] = []
    turn = 0
    while True:
        draws = np.arange(turn, turn + DRAWS) % k if probs is None else rng.choice(k, size=DRAWS, p=probs)
        turn += DRAWS
        for i in draws.tolist():
            group = groups[i]
            if cursor[i] >= len(group):
                if strategy == "interleave_under":
                    return np.asarray(out, dtype=np.int64)
                if all(cursor[j] >= len(groups[j]) for j in live):
                    return np.asarray(out, dtype=np.int64)
            out.append(int(group[cursor[i] % len(group)]))
            cursor[i] += 1
            if strategy == "interleave_over" and all(cursor[j] >= len(groups[j]) for j in live):
                return np.asarray(out, dtype=np.int64)


def mix(dataset_of: np.ndarray, settings: MixSettings, names: list[str]) -> tuple[np.ndarray, dict[str, Any]]:
    """(the order of prepared rows that makes the mixture, its statistics). `dataset_of` is
    each prepared row's entry in `datasets`; `names` says where each entry is, for messages."""
    groups, datasets = [], []
    for i, name in enumerate(names):
        rows = np.flatnonzero(dataset_of == i)
        kept = subsample(rows, settings.weights[i], settings.seed + i)
        groups.append(kept)
        datasets.append({"where": name, "available": int(len(rows)), "kept": int(len(kept)),
                         "weight": settings.weights[i]})
    if settings.strategy == "concat":
        order = np.concatenate(groups) if groups else np.zeros(0, dtype=np.int64)
    else:
        empty = [datasets[i]["where"] for i, g in enumerate(groups)
                 if len(g) == 0 and (settings.probs is None or settings.probs[i] > 0)]
        if empty:
            raise UserError(f"mix_strategy: {settings.strategy}: {', '.join(empty)} has no rows left after "
                            "filtering, so the mixture cannot draw from it")
        order = interleave(groups, settings.strategy, settings.probs, settings.seed)
    counts = np.bincount(dataset_of[order], minlength=len(names)) if len(order) else np.zeros(len(names), dtype=int)
    for entry, n in zip(datasets, counts.tolist()):
        entry["rows"] = n
    return order, {"strategy": settings.strategy, "probs": list(settings.probs) if settings.probs else None,
                   "rows": int(len(order)), "datasets": datasets}


def describe_mixture(stats: dict[str, Any]) -> list[str]:
    """The realised proportions: one line per dataset."""
    total = stats["rows"] or 1
    probs = stats.get("probs")
    asked = f", interleave_probs {', '.join(f'{p:g}' for p in probs)}" if probs else ""
    lines = [f"  mixture ({stats['strategy']}{asked}): {stats['rows']:,} rows"]
    for i, entry in enumerate(stats["datasets"]):
        weight = f", weight {entry['weight']:g}: {entry['kept']:,} of {entry['available']:,} rows kept" \
            if entry.get("weight") is not None else ""
        want = f" (asked {probs[i]:.1%})" if probs else ""
        lines.append(f"    {entry['where']}: {entry['rows']:,} rows, {entry['rows'] / total:.1%}{want}{weight}")
    return lines
