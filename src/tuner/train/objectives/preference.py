"""Preference training: DPO (and its loss types), IPO, SimPO, ORPO on pairs; KTO on unpaired
examples. The losses are tuner.train.objectives.preference_loss (TRL 1.16's definitions).

A pair's chosen and rejected sequences go through the model in one forward (tuner.data.pairs).
Sequence log-probabilities are sums over completion tokens (SimPO and ORPO: per-token means),
computed from the head at trained positions only (tuner.train.loss.token_logps).

Normalisation over the whole optimizer step: pair losses by the step's pairs; an NLL term
(RPO's `sft`, SimPO's `cpo_alpha`, ORPO's) by the step's chosen tokens, as TRL's token mean;
KTO by the step's examples.

The reference model
  * with an adapter: the same model with the adapter disabled (no second copy);
  * continuing an adapter (`lora_model_dir`): that adapter as loaded, a frozen copy under the
    name "reference" (TRL's ref_adapter_name), not the bare base;
  * a full fine-tune: a frozen copy of the model in the compute dtype;
  * `precompute_ref_log_probs`: the reference's log-probs computed once before training and
    stored with the rows (the reference is then freed).
SimPO and ORPO need no reference and load none.
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from typing import Any

import torch

from tuner.config.schema import PreferenceBlock, TunerConfig
from tuner.data.labels import IGNORE
from tuner.data.pairs import PairBatches, UnpairedBatches
from tuner.errors import UserError
from tuner.train.loss import sequence_logps, token_logps
from tuner.train.objectives import preference_loss as L
from tuner.train.objectives.base import combined_loss

PAIR_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                "logps/rejected")
REFERENCE_ADAPTER = "reference"


def needs_reference(p: PreferenceBlock) -> bool:
    return p.rl in ("dpo", "ipo", "kto")


class Reference:
    """How the reference log-probs of a batch are computed (see the module docstring)."""

    def __init__(self, model: Any, cfg: TunerConfig):
        a = cfg.adapter
        self.kind = "adapter_disabled"
        self.frozen: list[Any] = []  # a full fine-tune's frozen copy (a list: not a submodule)
        if not a.adapter:
            self.kind = "copy"
            self.frozen = [copy.deepcopy(model).requires_grad_(False).eval()]
        elif a.lora_model_dir:
            self.kind = "adapter_copy"
            model.load_adapter(a.lora_model_dir, adapter_name=REFERENCE_ADAPTER, is_trainable=False)

    def logps(self, model: Any, inputs: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if self.kind == "copy":
                ref = self.frozen[0]
                if next(ref.parameters()).device != labels.device:
                    ref.to(labels.device)
                return token_logps(ref, labels=labels, **inputs)
            with self._active(model):
                return token_logps(model, labels=labels, **inputs)

    @contextmanager
    def _active(self, model: Any) -> Any:
        if self.kind == "adapter_disabled":
            with model.disable_adapter():
                yield
            return
        # peft's set_adapter marks the active adapter trainable: restore every flag afterwards
        flags = {n: p.requires_grad for n, p in model.named_parameters()}
        model.set_adapter(REFERENCE_ADAPTER)
        try:
            yield
        finally:
            model.set_adapter("default")
            for n, p in model.named_parameters():
                p.requires_grad_(flags[n])


def _inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}


class PairLoss(torch.nn.Module):
    """The model and a pair loss: forward(batch) -> the batch's sums."""

    def __init__(self, model: Any, cfg: TunerConfig, objective: PairPreference):
        super().__init__()
        self.model = model
        self.objective = objective
        self.reference = Reference(model, cfg) if needs_reference(cfg.preference) and not \
            cfg.preference.precompute_ref_log_probs else None

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, sequence: torch.Tensor, **rest: torch.Tensor) -> dict:
        o = self.objective
        n = int(sequence.max()) // 2 + 1
        inputs = _inputs({"input_ids": input_ids, **rest})
        ref = None
        if o.p.rl in ("dpo", "ipo"):
            if "ref_chosen_logps" in rest:
                ref = torch.cat([rest["ref_chosen_logps"], rest["ref_rejected_logps"]]).float()
            else:
                ref = sequence_logps(self.reference.logps(self.model, inputs, labels), labels, sequence, 2 * n)[0]
        nll_labels = _whole_chosen(input_ids, labels, sequence, n) if o.p.rl == "orpo" else labels
        values = token_logps(self.model, labels=nll_labels, **inputs)
        if o.p.rl == "orpo":  # the completion tokens among all the chosen sequence's tokens
            completion = (labels[:, 1:] != IGNORE)[nll_labels[:, 1:] != IGNORE]
            nll = -values[(sequence[:, 1:] < n)[nll_labels[:, 1:] != IGNORE]].sum()
            values = values[completion]
        sums, counts = sequence_logps(values, labels, sequence, 2 * n)
        return o.pair_sums(sums[:n], sums[n:], counts[:n].float(), counts[n:].float(),
                           None if ref is None else (ref[:n], ref[n:]),
                           nll if o.p.rl == "orpo" else None)


def _whole_chosen(input_ids: torch.Tensor, labels: torch.Tensor, sequence: torch.Tensor, n: int) -> torch.Tensor:
    """ORPO's NLL labels: every token of a chosen sequence but its first (prompt included, as
    TRL 1.16), the completion labels elsewhere."""
    chosen = (sequence >= 0) & (sequence < n)
    first = torch.ones_like(chosen)
    first[:, 1:] = sequence[:, 1:] != sequence[:, :-1]
    return torch.where(chosen & ~first, input_ids, labels)


class PairPreference:
    """rl: dpo | ipo | simpo | orpo."""

    count_names = ("pairs", "chosen_tokens", "chosen_sequence_tokens")
    head = None  # a causal LM

    def __init__(self, cfg: TunerConfig):
        self._cfg = cfg
        self.p = p = cfg.preference
        self.name = p.rl
        self.beta = p.beta
        types = list(p.dpo_loss_type or ["sigmoid"]) if p.rl == "dpo" else ["ipo"] if p.rl == "ipo" else []
        weights = list(p.dpo_loss_weights or [1.0] * len(types))
        if p.rpo_alpha:
            types, weights = [*types, "sft"], [*weights, p.rpo_alpha]
        self.losses = [(t, w) for t, w in zip(types, weights) if t != "sft"]
        self.nll_weight = {"simpo": 1.0 if p.cpo_alpha is None else p.cpo_alpha, "orpo": 1.0}.get(
            p.rl, sum(w for t, w in zip(types, weights) if t == "sft"))
        self.sum_names = ("loss", "nll", *PAIR_METRICS) + (("log_odds_ratio", "log_odds_chosen") if p.rl == "orpo" else ())
        nll_count = "chosen_sequence_tokens" if p.rl == "orpo" else "chosen_tokens"
        self.loss_terms = {"loss": "pairs", **({"nll": nll_count} if self.nll_weight else {})}

    def batches(self, rows: Any, cfg: TunerConfig, pad_token_id: int, evaluation: bool) -> PairBatches:
        return PairBatches(rows, pad_token_id, packed=True, pad_to_multiple_of=cfg.data.pad_to_multiple_of)

    def wrap(self, model: torch.nn.Module) -> PairLoss:
        return PairLoss(model, self._cfg, self)

    def sums(self, output: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return output

    def counts(self, batch: dict[str, torch.Tensor]) -> dict[str, int]:
        sequence, labels = batch["sequence"], batch["labels"]
        n = int(sequence.max()) // 2 + 1
        chosen = (sequence[:, 1:] >= 0) & (sequence[:, 1:] < n)
        same = sequence[:, 1:] == sequence[:, :-1]
        return {"pairs": n, "chosen_tokens": int((chosen & (labels[:, 1:] != IGNORE)).sum()),
                "chosen_sequence_tokens": int((chosen & same).sum())}

    def pair_sums(self, pi_c: torch.Tensor, pi_r: torch.Tensor, n_c: torch.Tensor, n_r: torch.Tensor,
                  ref: tuple[torch.Tensor, torch.Tensor] | None, orpo_nll: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The sums of one micro-batch of pairs from its sequence log-probs (summed over completion tokens)."""
        p, beta = self.p, self.beta
        nll = -pi_c.sum() * self.nll_weight
        extra: dict[str, torch.Tensor] = {}
        if p.rl == "simpo":
            pi_c, pi_r = pi_c / n_c, pi_r / n_r
            out = L.simpo(pi_c, pi_r, beta, 0.5 if p.simpo_gamma is None else p.simpo_gamma)
            losses = out.losses
        elif p.rl == "orpo":
            pi_c, pi_r = pi_c / n_c, pi_r / n_r
            out = L.orpo(pi_c, pi_r, beta)
            losses, nll = out.losses, orpo_nll
            extra = {"log_odds_ratio": out.log_odds_ratio.sum(), "log_odds_chosen": out.log_odds.sum()}
        else:
            ref_c, ref_r = ref
            losses = torch.zeros_like(pi_c)
            for loss_type, weight in self.losses:
                out = self._dpo(loss_type, pi_c, pi_r, ref_c, ref_r, n_c, n_r)
                losses = losses + weight * out.losses
            out = L.PairLosses(losses, beta * (pi_c - ref_c).detach(), beta * (pi_r - ref_r).detach())
        c, r = out.chosen_rewards, out.rejected_rewards
        return {
            "loss": losses.sum(), "nll": nll,
            "rewards/chosen": c.sum(), "rewards/rejected": r.sum(), "rewards/accuracies": (c > r).float().sum(),
            "rewards/margins": (c - r).sum(), "logps/chosen": pi_c.detach().sum(), "logps/rejected": pi_r.detach().sum(),
            **extra,
        }

    def _dpo(self, loss_type: str, pi_c, pi_r, ref_c, ref_r, n_c, n_r) -> L.PairLosses:
        smoothing = self.p.dpo_label_smoothing or 0.0
        if loss_type == "sigmoid" and smoothing:  # conservative DPO (TRL 1.16 ignores label smoothing here)
            return L.cdpo(pi_c, pi_r, ref_c, ref_r, self.beta, smoothing)
        return L.dpo_loss(loss_type, pi_c, pi_r, ref_c, ref_r, self.beta, n_c=n_c, n_r=n_r, label_smoothing=smoothing)

    def report(self, sums: dict[str, float], counts: dict[str, float], evaluation: bool) -> dict[str, float]:
        pairs = counts.get("pairs", 0.0)
        out = {"loss": combined_loss(self, sums, counts)}
        if "nll" in self.loss_terms:
            tokens = counts.get(self.loss_terms["nll"], 0.0)
            out["nll_loss"] = sums["nll"] / tokens / self.nll_weight if tokens else math.nan
        out.update({k: sums[k] / pairs if pairs else math.nan for k in self.sum_names if k not in ("loss", "nll")})
        if evaluation:
            out["pairs"] = int(pairs)
        return out


class UnpairedLoss(torch.nn.Module):
    """The model and KTO's loss: forward(batch) -> the batch's sums."""

    def __init__(self, model: Any, cfg: TunerConfig, objective: KTO):
        super().__init__()
        self.model = model
        self.objective = objective
        self.reference = Reference(model, cfg)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, sequence: torch.Tensor,
                desirable: torch.Tensor, **rest: torch.Tensor) -> dict:
        n = desirable.numel()
        inputs = _inputs({"input_ids": input_ids, **rest})
        kl_inputs = _inputs({k[3:]: v for k, v in rest.items() if k.startswith("kl_")})
        kl_labels, kl_sequence = rest["kl_labels"], rest["kl_sequence"]
        ref = sequence_logps(self.reference.logps(self.model, inputs, labels), labels, sequence, n)[0]
        ref_kl = sequence_logps(self.reference.logps(self.model, kl_inputs, kl_labels), kl_labels, kl_sequence, n)[0]
        with torch.no_grad():  # the KL sequences only set the (detached) reference point
            policy_kl = sequence_logps(token_logps(self.model, labels=kl_labels, **kl_inputs), kl_labels, kl_sequence, n)[0]
        pi = sequence_logps(token_logps(self.model, labels=labels, **inputs), labels, sequence, n)[0]
        return self.objective.example_sums(pi, ref, desirable, policy_kl, ref_kl)


class KTO:
    """rl: kto."""

    name = "kto"
    head = None  # a causal LM
    count_names = ("examples", "desirable", "undesirable", "micro_batches")
    sum_names = ("loss", "kl", "rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected")
    loss_terms = {"loss": "examples"}

    def __init__(self, cfg: TunerConfig):
        self.p = cfg.preference
        self._cfg = cfg
        if cfg.training.micro_batch_size < 2:
            raise UserError("rl: kto needs micro_batch_size of 2 or more: each example's KL term pairs its prompt with "
                            "another example's completion in the same micro-batch (as TRL).")

    def batches(self, rows: Any, cfg: TunerConfig, pad_token_id: int, evaluation: bool) -> UnpairedBatches:
        return UnpairedBatches(rows, pad_token_id, packed=True, pad_to_multiple_of=cfg.data.pad_to_multiple_of)

    def wrap(self, model: torch.nn.Module) -> UnpairedLoss:
        return UnpairedLoss(model, self._cfg, self)

    def sums(self, output: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return output

    def counts(self, batch: dict[str, torch.Tensor]) -> dict[str, int]:
        d = batch["desirable"]
        return {"examples": d.numel(), "desirable": int(d.sum()), "undesirable": int((~d).sum()), "micro_batches": 1}

    def example_sums(self, pi: torch.Tensor, ref: torch.Tensor, desirable: torch.Tensor, policy_kl: torch.Tensor,
                     ref_kl: torch.Tensor) -> dict[str, torch.Tensor]:
        kl = _mean_over_processes(policy_kl - ref_kl).clamp(min=0)
        out = L.kto(pi, ref, desirable, kl, self.p.beta, self.p.kto_desirable_weight or 1.0,
                    self.p.kto_undesirable_weight or 1.0)
        d = desirable.bool()
        return {"loss": out.losses.sum(), "kl": kl, "rewards/chosen": out.rewards[d].sum(),
                "rewards/rejected": out.rewards[~d].sum(), "logps/chosen": pi.detach()[d].sum(),
                "logps/rejected": pi.detach()[~d].sum()}

    def report(self, sums: dict[str, float], counts: dict[str, float], evaluation: bool) -> dict[str, float]:
        div = lambda k, c: sums[k] / counts[c] if counts.get(c) else math.nan  # noqa: E731
        out = {"loss": combined_loss(self, sums, counts), "kl": div("kl", "micro_batches"),
               "rewards/chosen": div("rewards/chosen", "desirable"), "rewards/rejected": div("rewards/rejected", "undesirable"),
               "logps/chosen": div("logps/chosen", "desirable"), "logps/rejected": div("logps/rejected", "undesirable")}
        out["rewards/margins"] = out["rewards/chosen"] - out["rewards/rejected"]
        if evaluation:
            out["examples"] = int(counts.get("examples", 0))
        return out


def _mean_over_processes(values: torch.Tensor) -> torch.Tensor:
    """The batch mean, detached; with several processes the mean of the processes' means (TRL's KTO)."""
    mean = values.detach().mean()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        mean = mean.clone()
        torch.distributed.all_reduce(mean)
        mean = mean / torch.distributed.get_world_size()
    return mean


def precompute_reference(cfg: TunerConfig, model: Any, rows: Any, pad_token_id: int, accelerator: Any) -> Any:
    """`precompute_ref_log_probs`: the reference's sequence log-probs of every pair, computed once
    (in micro-batches, under the run's autocast) and added to the rows as `ref_chosen_logps` /
    `ref_rejected_logps`; the reference (a full fine-tune's frozen copy) is freed afterwards."""
    reference = Reference(model, cfg)
    batches = PairBatches(rows, pad_token_id, packed=True)
    chosen: list[float] = []
    rejected: list[float] = []
    was_training = model.training
    model.eval()
    size = cfg.training.micro_batch_size
    for start in range(0, batches.units, size):
        batch = {k: v.to(accelerator.device) for k, v in batches.batch(list(range(start, min(start + size, batches.units)))).items()}
        n = int(batch["sequence"].max()) // 2 + 1
        with accelerator.autocast():
            values = reference.logps(model, _inputs(batch), batch["labels"])
        sums = sequence_logps(values, batch["labels"], batch["sequence"], 2 * n)[0].double().cpu().tolist()
        chosen += sums[:n]
        rejected += sums[n:]
    model.train(was_training)
    if reference.kind == "adapter_copy":
        model.delete_adapter(REFERENCE_ADAPTER)
    reference.frozen.clear()
    return rows.add_column("ref_chosen_logps", chosen).add_column("ref_rejected_logps", rejected)
