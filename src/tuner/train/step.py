"""The arithmetic of one optimizer step, and of an evaluation, for any objective.

One optimizer step:
  1. take `gradient_accumulation_steps` micro-batches of this process's units,
  2. count what the loss is normalised by (trained tokens for SFT, pairs for preference
     training) and sum that count over all processes,
  3. for each micro-batch, backward (summed loss) * world_size / (the step's count)
     (DDP averages gradients over processes, hence the world_size),
so the loss of a step is the sum of its losses divided by its count: every trained token
(or pair) weighs the same, however they are spread over micro-batches and processes.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from tuner.train.objectives.base import Objective, Units


@dataclass
class Totals:
    """Sums over a step (or an evaluation), all processes, and what they are normalised by."""

    sums: dict[str, float] = field(default_factory=dict)
    count: float = 0.0

    @property
    def loss(self) -> float:
        return self.sums["loss"] / self.count if self.count else float("nan")

    def add(self, other: Totals) -> None:
        for k, v in other.sums.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += other.count


def reduce_sum(accelerator: Any, value: float | int | torch.Tensor) -> float:
    """`value` summed over all processes, as a Python float."""
    tensor = torch.as_tensor(value, dtype=torch.float64, device=accelerator.device)
    if accelerator.num_processes > 1:
        tensor = accelerator.reduce(tensor, reduction="sum")
    return float(tensor)


def _reduce_sums(accelerator: Any, sums: dict[str, Any], names: tuple[str, ...]) -> dict[str, float]:
    """Every process reduces the same names (a process without evaluation units sends zeros)."""
    stacked = torch.stack([torch.as_tensor(sums.get(n, 0.0), dtype=torch.float64).cpu() for n in names])
    stacked = stacked.to(accelerator.device)
    if accelerator.num_processes > 1:
        stacked = accelerator.reduce(stacked, reduction="sum")
    return {n: float(v) for n, v in zip(names, stacked.tolist())}


def _on_device(batch: dict[str, torch.Tensor], device: Any) -> dict[str, torch.Tensor]:
    return {key: value.to(device) for key, value in batch.items()}


def accumulate_gradients(module: Any, batches: list[dict[str, torch.Tensor]], accelerator: Any,
                         objective: Objective) -> Totals:
    """Backward over the micro-batches of one optimizer step; the step's totals."""
    count = reduce_sum(accelerator, sum(objective.count(b) for b in batches))
    scale = accelerator.num_processes / count
    sums: dict[str, torch.Tensor] = {}
    for k, batch in enumerate(batches):
        last = k == len(batches) - 1
        with nullcontext() if last else accelerator.no_sync(module), accelerator.autocast():
            out = objective.sums(module(**_on_device(batch, accelerator.device)))
        accelerator.backward(out["loss"] * scale)
        for name, value in out.items():
            sums[name] = sums.get(name, 0) + value.detach().double()
    return Totals(_reduce_sums(accelerator, sums, objective.sum_names), count)


def evaluate(module: Any, batches: Units, micro_batch_size: int, accelerator: Any, objective: Objective) -> Totals:
    """Totals over the evaluation units, split over processes, without gradients."""
    module.eval()
    count = 0
    sums: dict[str, torch.Tensor] = {}
    mine = list(range(accelerator.process_index, batches.units, accelerator.num_processes))
    with torch.no_grad():
        for i in range(0, len(mine), micro_batch_size):
            batch = batches.batch(mine[i : i + micro_batch_size])
            count += objective.count(batch)
            with accelerator.autocast():
                out = objective.sums(module(**_on_device(batch, accelerator.device)))
            for name, value in out.items():
                sums[name] = sums.get(name, 0) + value.detach().double()
    module.train()
    return Totals(_reduce_sums(accelerator, sums, objective.sum_names), reduce_sum(accelerator, count))
