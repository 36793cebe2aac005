"""Which rows each process uses in each optimizer step, and when to evaluate and save."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from tuner.config.schema import TrainingBlock
from tuner.data.pack import shuffled_order


@dataclass(frozen=True)
class StepPlan:
    """Rows are shuffled once per epoch with `seed + epoch` (kept in order with
    `shuffle_merged_datasets: false`). A *global* micro-batch is
    `micro_batch_size * world_size` consecutive units (rows, or packed bins) of that order;
    process `rank` takes its slice. With several processes the order is padded by wrapping
    around, so every process runs the same number of micro-batches.

    `repeats` (GRPO's `num_iterations`): each step's units serve that many consecutive
    optimizer steps (a rollout objective trains on the same sampled batch again), so an epoch
    has that many times the steps, as in TRL, whose sampler repeats each generation batch.
    """

    rows: int
    micro_batch_size: int
    accumulation: int
    world_size: int
    total_steps: int
    seed: int
    shuffle: bool = True
    repeats: int = 1

    @property
    def micro_batches_per_epoch(self) -> int:
        return math.ceil(self.rows / (self.micro_batch_size * self.world_size))

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.micro_batches_per_epoch / self.accumulation) * self.repeats

    @classmethod
    def build(cls, rows: int, t: TrainingBlock, world_size: int, shuffle: bool = True, repeats: int = 1) -> StepPlan:
        probe = cls(rows, t.micro_batch_size, t.gradient_accumulation_steps, world_size, 0, t.seed, repeats=repeats)
        total = t.max_steps if t.max_steps is not None else math.ceil((t.num_epochs or 1) * probe.steps_per_epoch)
        return cls(rows, t.micro_batch_size, t.gradient_accumulation_steps, world_size, max(1, total), t.seed, shuffle,
                   repeats)

    def epoch_order(self, epoch: int) -> list[int]:
        order = shuffled_order(self.rows, self.seed + epoch) if self.shuffle else list(range(self.rows))
        per_global = self.micro_batch_size * self.world_size
        if self.world_size > 1 and len(order) % per_global:
            order += order[: per_global - len(order) % per_global]
        return order

    def steps(self, rank: int, start_step: int = 0) -> Iterator[tuple[int, int, list[list[int]]]]:
        """(step, epoch, [unit indices of each micro-batch of this process]) from `start_step` on."""
        step = start_step
        epoch, skip = divmod(start_step, self.steps_per_epoch)
        while step < self.total_steps:
            order = self.epoch_order(epoch)
            per_global = self.micro_batch_size * self.world_size
            globals_ = [order[i : i + per_global] for i in range(0, len(order), per_global)]
            mine = [g[rank * self.micro_batch_size : (rank + 1) * self.micro_batch_size] for g in globals_]
            groups = [mine[i : i + self.accumulation] for i in range(0, len(mine), self.accumulation)]
            for group in [g for g in groups for _ in range(self.repeats)][skip:]:
                if step >= self.total_steps:
                    return
                yield step, epoch, group
                step += 1
            epoch, skip = epoch + 1, 0


@dataclass(frozen=True)
class Cadence:
    """When to evaluate and save: every N steps, or (neither set) at the end of each epoch.
    Neither happens after the last step: the final eval and save follow the loop."""

    steps_per_epoch: int
    total_steps: int
    eval_every: int | None
    save_every: int | None

    @classmethod
    def build(cls, t: TrainingBlock, plan: StepPlan) -> Cadence:
        """`eval_steps` / `evals_per_epoch` and `save_steps` / `saves_per_epoch` (TrainingBlock)."""
        return cls(plan.steps_per_epoch, plan.total_steps, t.eval_interval(plan.steps_per_epoch, plan.total_steps),
                   t.save_interval(plan.steps_per_epoch, plan.total_steps))

    def _due(self, done: int, interval: int | None) -> bool:
        if done >= self.total_steps:
            return False
        return done % interval == 0 if interval else done % self.steps_per_epoch == 0

    def eval_due(self, done: int) -> bool:
        return self._due(done, self.eval_every)

    def save_due(self, done: int) -> bool:
        return self._due(done, self.save_every)
