"""What an objective is: the three things in which SFT, preference training, reward
modelling and the rest differ. The loop (tuner.train.loop) runs any of them unchanged.

An objective declares
  * `batches(rows, ...)`: how prepared rows (built once by the data stage, with their
    labels) become micro-batches: an object with `units`, `batch(units)` and
    `tokens(units)` (see tuner.data.pack.Batches);
  * `wrap(model)`: the model and the loss as one module, so that accelerate wraps one
    module whose forward runs every trainable parameter. Its forward(**batch) returns the
    *sums* of the batch (its loss summed over what it is normalised by, and any metrics
    summed the same way), and it keeps the model as `.model`;
  * `count(batch)`: what the loss of a batch is normalised by (trained tokens for SFT, pairs
    for preference training). The loop divides a step's summed loss by the count of the whole
    step, all micro-batches and all processes;
  * `report(sums, count, evaluation)`: the values logged for summed metrics.
Everything else (the step, accumulation, clipping, NaN policy, signals, checkpoints, eval,
trackers, report, save) is the loop's, written once.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from tuner.config.schema import TunerConfig


class Units(Protocol):
    """Micro-batches of prepared rows by unit index (a unit: a row, a packed bin, a pair)."""

    units: int
    efficiency: float

    def batch(self, units: list[int]) -> dict[str, torch.Tensor]: ...

    def tokens(self, units: list[int]) -> int: ...


class Objective(Protocol):
    name: str
    count_name: str  # what `count` counts, as logged: "trained_tokens", "pairs", ...
    sum_names: tuple[str, ...]  # the names `sums` returns ("loss" first)

    def batches(self, rows: Any, cfg: TunerConfig, pad_token_id: int, evaluation: bool) -> Units: ...

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module: ...

    def sums(self, output: Any) -> dict[str, torch.Tensor]:
        """The wrapped module's output as named sums; "loss" is the one that trains."""
        ...

    def count(self, batch: dict[str, torch.Tensor]) -> int: ...

    def report(self, sums: dict[str, float], count: float, evaluation: bool) -> dict[str, float]: ...
