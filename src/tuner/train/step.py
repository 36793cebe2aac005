"""The arithmetic of one optimizer step, and of an evaluation, for any objective.

One optimizer step:
  1. take `gradient_accumulation_steps` micro-batches of this process's units,
  2. count what the loss terms are normalised by (trained tokens for SFT, pairs for
     preference training, ...) and sum those counts over all processes,
  3. for each micro-batch, backward sum over terms of (summed term) * world_size / (its
     count over the step) (DDP averages gradients over processes, hence the world_size),
so the loss of a step is each term's sum divided by its count: every trained token (or
pair) weighs the same, however they are spread over micro-batches and processes.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from tuner.train.objectives.base import Objective, Units, combined_loss


@dataclass
class Totals:
    """Sums over a step (or an evaluation) on all processes, the counts that normalise them,
    and the loss they make."""

    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, float] = field(default_factory=dict)
    loss: float = float("nan")


def reduce_sum(accelerator: Any, value: float | int | torch.Tensor) -> float:
    """`value` summed over all processes, as a Python float."""
    tensor = torch.as_tensor(value, dtype=torch.float64, device=accelerator.device)
    if accelerator.num_processes > 1:
        tensor = accelerator.reduce(tensor, reduction="sum")
    return float(tensor)


def reduce_sums(accelerator: Any, values: dict[str, Any], names: tuple[str, ...]) -> dict[str, float]:
    """Each named value summed over all processes (a process that has none of a name sends 0)."""
    stacked = torch.stack([torch.as_tensor(values.get(n, 0.0), dtype=torch.float64).cpu() for n in names])
    stacked = stacked.to(accelerator.device)
    if accelerator.num_processes > 1:
        stacked = accelerator.reduce(stacked, reduction="sum")
    return {n: float(v) for n, v in zip(names, stacked.tolist())}


def _on_device(batch: dict[str, torch.Tensor], device: Any) -> dict[str, torch.Tensor]:
    return {key: value.to(device) for key, value in batch.items()}


def _add(into: dict[str, Any], values: dict[str, Any]) -> None:
    for name, value in values.items():
        into[name] = into.get(name, 0) + value


def accumulate_gradients(module: Any, batches: list[dict[str, torch.Tensor]], accelerator: Any,
                         objective: Objective) -> Totals:
    """Backward over the micro-batches of one optimizer step; the step's totals."""
    local: dict[str, int] = {}
    for batch in batches:
        _add(local, objective.counts(batch))
    counts = reduce_sums(accelerator, local, objective.count_names)
    scales = {term: accelerator.num_processes / counts[name] for term, name in objective.loss_terms.items()}
    sums: dict[str, torch.Tensor] = {}
    for k, batch in enumerate(batches):
        last = k == len(batches) - 1
        with nullcontext() if last else accelerator.no_sync(module), accelerator.autocast():
            out = objective.sums(module(**_on_device(batch, accelerator.device)))
        accelerator.backward(sum(out[term] * scale for term, scale in scales.items()))
        _add(sums, {name: value.detach().double() for name, value in out.items()})
    reduced = reduce_sums(accelerator, sums, objective.sum_names)
    return Totals(reduced, counts, combined_loss(objective, reduced, counts))


def evaluate(module: Any, batches: Units, micro_batch_size: int, accelerator: Any, objective: Objective) -> Totals:
    """Totals over the evaluation units, split over processes, without gradients."""
    module.eval()
    local: dict[str, int] = {}
    sums: dict[str, torch.Tensor] = {}
    mine = list(range(accelerator.process_index, batches.units, accelerator.num_processes))
    with torch.no_grad():
        for i in range(0, len(mine), micro_batch_size):
            batch = batches.batch(mine[i : i + micro_batch_size])
            _add(local, objective.counts(batch))
            with accelerator.autocast():
                out = objective.sums(module(**_on_device(batch, accelerator.device)))
            _add(sums, {name: value.detach().double() for name, value in out.items()})
    module.train()
    counts = reduce_sums(accelerator, local, objective.count_names)
    reduced = reduce_sums(accelerator, sums, objective.sum_names)
    return Totals(reduced, counts, combined_loss(objective, reduced, counts))
