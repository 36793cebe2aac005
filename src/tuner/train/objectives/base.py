"""What an objective is: the three things in which SFT, preference training, reward
modelling and the rest differ. The loop (tuner.train.loop) runs any of them unchanged.

An objective declares
  * `batches(rows, ...)`: how prepared rows (built once by the data stage, with their
    labels) become micro-batches: an object with `units`, `batch(units)` and
    `tokens(units)` (see tuner.data.pack.Batches);
  * `wrap(model)`: the model and the loss as one module, so that accelerate wraps one
    module whose forward runs every trainable parameter. Its forward(**batch) returns the
    *sums* of the batch (each loss term summed over what it is normalised by, metrics summed
    the same way), read by `sums(output)`; the module keeps the model as `.model`;
  * `counts(batch)`: what the loss terms are normalised by (trained tokens for SFT; pairs,
    and for an added NLL term chosen tokens, for preference training). `loss_terms` maps each
    loss term to its count. The loop divides each term's step sum by its count over the whole
    step, all micro-batches and all processes: the loss of a step is
        sum over terms of (term summed over the step) / (its count over the step);
  * `report(sums, counts, evaluation)`: the values logged for a step, a logging window or an
    evaluation;
  * `head`: None for a causal LM; for reward models and classification the sequence-
    classification head the model is loaded with (tuner.models.heads.Head).
Everything else (the step, accumulation, clipping, NaN policy, signals, checkpoints, eval,
trackers, report, save) is the loop's, written once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from tuner.config.schema import TrainingBlock, TunerConfig

if TYPE_CHECKING:
    from tuner.models.heads import Head


class Units(Protocol):
    """Micro-batches of prepared rows by unit index (a unit: a row, a packed bin, a pair)."""

    units: int
    efficiency: float

    def batch(self, units: list[int]) -> dict[str, torch.Tensor]: ...

    def tokens(self, units: list[int]) -> int: ...


class Objective(Protocol):
    name: str
    count_names: tuple[str, ...]  # what `counts` counts; the first is logged as the step's count
    sum_names: tuple[str, ...]  # the names `sums` returns
    loss_terms: dict[str, str]  # sum name -> the count it is normalised by
    head: Head | None  # None: a causal LM

    def batches(self, rows: Any, cfg: TunerConfig, pad_token_id: int, evaluation: bool) -> Units: ...

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module: ...

    def sums(self, output: Any) -> dict[str, torch.Tensor]: ...

    def counts(self, batch: dict[str, torch.Tensor]) -> dict[str, int]: ...

    def report(self, sums: dict[str, float], counts: dict[str, float], evaluation: bool) -> dict[str, float]: ...


@runtime_checkable
class Rollouts(Protocol):
    """An objective that makes its own training sequences (online RL: GRPO). Its units are
    prompts; before each optimizer step the loop hands it the step's prompt batches and trains
    on the micro-batches it returns (the accumulation, normalisation and the rest unchanged).
    Its counts include `sequence_tokens` (the tokens its training forward processes): the
    step's tokens for tokens/s. `updates_per_rollout` optimizer steps train on each rollout (the
    plan hands them the same prompts); an objective that keeps a rollout between steps has
    `state_dict()` / `load_state_dict(tensors, step)` for checkpoints (tuner.train.checkpoint)."""

    updates_per_rollout: int

    def plan_training(self, t: TrainingBlock, tokenizer: Any) -> TrainingBlock:
        """The step plan's view of training: how many units (prompts) a step takes, as
        micro_batch_size x gradient_accumulation_steps. Receives the tokenizer."""
        ...

    def rollout(self, module: torch.nn.Module, batches: list[dict[str, torch.Tensor]], accelerator: Any,
                step: int) -> list[dict[str, torch.Tensor]]:
        """The step's training micro-batches, made from its prompt batches."""
        ...


def combined_loss(objective: Objective, sums: dict[str, float], counts: dict[str, float]) -> float:
    """The loss of summed terms: each term over its own count (NaN when a count is 0)."""
    total = 0.0
    for term, count_name in objective.loss_terms.items():
        count = counts.get(count_name, 0.0)
        total += sums[term] / count if count else float("nan")
    return total
