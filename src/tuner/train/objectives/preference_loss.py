"""Preference-optimisation losses as pure functions of sequence log-probabilities.

Torch only: no model, no loop. Each function takes per-sequence log-probabilities (one value
per chosen / rejected completion) and hyper-parameters and returns *per-pair* losses (KTO:
per example) together with the rewards TRL logs, so an objective can sum them over a step and
divide by its count. The definitions are TRL 1.16's, checked against a fixture made with
TRL's own trainers (tests/fixtures/trl/, tests/unit/test_preference_loss.py).

Notation: for one pair, pi_c / pi_r are the policy's log-probs of the chosen / rejected
completion, ref_c / ref_r the reference's; log-probs are sums over completion tokens except
where a function says "mean" (SimPO and ORPO use the per-token mean). n_c / n_r are the
completion token counts; beta the temperature; sigma the logistic function.

    h_c = pi_c - ref_c,  h_r = pi_r - ref_r        (log-ratios; "implicit rewards" / beta)
    delta = h_c - h_r
    rewards/chosen = beta * h_c,  rewards/rejected = beta * h_r   (DPO family)

TRL's loss of a batch is the mean of the per-pair losses (loss_weights: a weighted sum of
such means); its logged metrics are means over the batch (see `pair_metrics`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


class PairLosses(NamedTuple):
    """Per-pair losses and the (detached) rewards TRL logs for them."""

    losses: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor


def _dpo_rewards(losses: Tensor, h_c: Tensor, h_r: Tensor, beta: float) -> PairLosses:
    return PairLosses(losses, beta * h_c.detach(), beta * h_r.detach())


def _ratios(pi_c: Tensor, pi_r: Tensor, ref_c: Tensor, ref_r: Tensor) -> tuple[Tensor, Tensor]:
    return pi_c - ref_c, pi_r - ref_r


# --------------------------------------------------------------------------- the DPO family


def dpo_sigmoid(pi_c: Tensor, pi_r: Tensor, ref_c: Tensor, ref_r: Tensor, beta: float) -> PairLosses:
    """DPO (Rafailov et al. 2023, eq. 7):  loss = -log sigma(beta * delta).

    TRL 1.16 ignores `label_smoothing` for this loss (see `cdpo` for the conservative variant).
    """
    h_c, h_r = _ratios(pi_c, pi_r, ref_c, ref_r)
    return _dpo_rewards(-F.logsigmoid(beta * (h_c - h_r)), h_c, h_r, beta)


def cdpo(pi_c: Tensor, pi_r: Tensor, ref_c: Tensor, ref_r: Tensor, beta: float, label_smoothing: float) -> PairLosses:
    """Conservative DPO (Mitchell 2023; TRL's `sigmoid` with `label_smoothing` before 1.0):

        loss = -(1 - eps) * log sigma(beta * delta) - eps * log sigma(-beta * delta)

    Not a TRL 1.16 loss type: 1.16's `sigmoid` drops eps and its `robust` is a different formula
    (`dpo_robust`). eps = 0 is `dpo_sigmoid`.
    """
    h_c, h_r = _ratios(pi_c, pi_r, ref_c, ref_r)
    z = beta * (h_c - h_r)
    losses = -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    return _dpo_rewards(losses, h_c, h_r, beta)


def dpo_robust(
    pi_c: Tensor, pi_r: Tensor, ref_c: Tensor, ref_r: Tensor, beta: float, label_smoothing: float
) -> PairLosses:
    """Robust DPO (Chowdhury et al. 2024), eps = label_smoothing in [0, 0.5):

        loss = (-(1 - eps) * log sigma(beta * delta) + eps * log sigma(-beta * delta)) / (1 - 2 eps)
    """
    h_c, h_r = _ratios(pi_c, pi_r, ref_c, ref_r)
    z = beta * (h_c - h_r)
    losses = (-(1 - label_smoothing) * F.logsigmoid(z) + label_smoothing * F.logsigmoid(-z)) / (
        1 - 2 * label_smoothing
    )
    return _dpo_rewards(losses, h_c, h_r, beta)


def dpo_hinge(pi_c: Tensor, pi_r: Tensor, ref_c: Tensor, ref_r: Tensor, beta: float) -> PairLosses:
    """Hinge (SLiC, Zhao et al. 2023):  loss = max(0, 1 - beta * delta)."""
    h_c, h_r = _ratios(pi_c, pi_r, ref_c, ref_r)
    return _dpo_rewards(torch.relu(1 - beta * (h_c - h_r)), h_c, h_r, beta)


def dpo_ipo(
    pi_c: Tensor, pi_r: Tensor, ref_c: Tensor, ref_r: Tensor, n_c: Tensor, n_r: Tensor, beta: float
) -> PairLosses:
    """IPO (Azar et al. 2023, eq. 17) on per-token log-ratios, as TRL 1.16 computes it:

        loss = (h_c / n_c - h_r / n_r - 1 / (2 beta))^2     (n clamped to >= 1; beta is tau)

    The rewards TRL logs stay beta * h (sums, not per-token).
    """
    h_c, h_r = _ratios(pi_c, pi_r, ref_c, ref_r)
    d = h_c / n_c.clamp(min=1) - h_r / n_r.clamp(min=1)
    return _dpo_rewards((d - 1 / (2 * beta)) ** 2, h_c, h_r, beta)


def dpo_sigmoid_norm(
    pi_c: Tensor, pi_r: Tensor, ref_c: Tensor, ref_r: Tensor, n_c: Tensor, n_r: Tensor, beta: float
) -> PairLosses:
    """Length-normalised DPO:  loss = -log sigma(beta * (h_c / n_c - h_r / n_r))."""
    h_c, h_r = _ratios(pi_c, pi_r, ref_c, ref_r)
    d = h_c / n_c.clamp(min=1) - h_r / n_r.clamp(min=1)
    return _dpo_rewards(-F.logsigmoid(beta * d), h_c, h_r, beta)


def dpo_exo_pair(
    pi_c: Tensor, pi_r: Tensor, ref_c: Tensor, ref_r: Tensor, beta: float, label_smoothing: float
) -> PairLosses:
    """EXO-pref (Ji et al. 2024, eq. 16), eps = label_smoothing > 0:

        loss = s(z) (log s(z) - log(1 - eps)) + s(-z) (log s(-z) - log eps),   z = beta * delta
    """
    h_c, h_r = _ratios(pi_c, pi_r, ref_c, ref_r)
    z = beta * (h_c - h_r)
    losses = torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-label_smoothing)) + torch.sigmoid(-z) * (
        F.logsigmoid(-z) - math.log(label_smoothing)
    )
    return _dpo_rewards(losses, h_c, h_r, beta)


def dpo_nca_pair(pi_c: Tensor, pi_r: Tensor, ref_c: Tensor, ref_r: Tensor, beta: float) -> PairLosses:
    """NCA (Chen et al. 2024):  loss = -log s(beta h_c) - 0.5 log s(-beta h_c) - 0.5 log s(-beta h_r)."""
    h_c, h_r = _ratios(pi_c, pi_r, ref_c, ref_r)
    losses = -F.logsigmoid(beta * h_c) - 0.5 * F.logsigmoid(-beta * h_c) - 0.5 * F.logsigmoid(-beta * h_r)
    return _dpo_rewards(losses, h_c, h_r, beta)


def dpo_bco_pair(pi_c: Tensor, pi_r: Tensor, ref_c: Tensor, ref_r: Tensor, beta: float) -> PairLosses:
    """BCO, paired and without TRL's old running reward shift:  loss = -log s(beta h_c) - log s(-beta h_r)."""
    h_c, h_r = _ratios(pi_c, pi_r, ref_c, ref_r)
    return _dpo_rewards(-F.logsigmoid(beta * h_c) - F.logsigmoid(-beta * h_r), h_c, h_r, beta)


def dpo_sppo_hard(pi_c: Tensor, pi_r: Tensor, ref_c: Tensor, ref_r: Tensor, beta: float) -> PairLosses:
    """SPPO with hard probabilities (Wu et al. 2024):  loss = (h_c - 1/(2 beta))^2 + (h_r + 1/(2 beta))^2."""
    h_c, h_r = _ratios(pi_c, pi_r, ref_c, ref_r)
    return _dpo_rewards((h_c - 0.5 / beta) ** 2 + (h_r + 0.5 / beta) ** 2, h_c, h_r, beta)


def dpo_aot(
    pi_c: Tensor, pi_r: Tensor, ref_c: Tensor, ref_r: Tensor, beta: float, label_smoothing: float = 0.0
) -> PairLosses:
    """AOT, paired (Melnyk et al. 2024): sort the batch's policy margins and reference margins
    separately, d = sort(pi_c - pi_r) - sort(ref_c - ref_r),

        loss = -(1 - eps) log s(beta d) - eps log s(-beta d)

    Batch-coupled: a "per-pair" value belongs to a rank, not to a pair; only its mean is meaningful.
    """
    h_c, h_r = _ratios(pi_c, pi_r, ref_c, ref_r)
    d = torch.sort(pi_c - pi_r, dim=0).values - torch.sort(ref_c - ref_r, dim=0).values
    losses = -F.logsigmoid(beta * d) * (1 - label_smoothing) - F.logsigmoid(-beta * d) * label_smoothing
    return _dpo_rewards(losses, h_c, h_r, beta)


def dpo_aot_unpaired(
    pi_c: Tensor, pi_r: Tensor, ref_c: Tensor, ref_r: Tensor, beta: float, label_smoothing: float = 0.0
) -> PairLosses:
    """AOT, unpaired: d = sort(h_c) - sort(h_r), then the loss of `dpo_aot` (batch-coupled too)."""
    h_c, h_r = _ratios(pi_c, pi_r, ref_c, ref_r)
    d = torch.sort(h_c, dim=0).values - torch.sort(h_r, dim=0).values
    losses = -F.logsigmoid(beta * d) * (1 - label_smoothing) - F.logsigmoid(-beta * d) * label_smoothing
    return _dpo_rewards(losses, h_c, h_r, beta)


def dpo_apo_zero(pi_c: Tensor, pi_r: Tensor, ref_c: Tensor, ref_r: Tensor, beta: float) -> PairLosses:
    """APO-zero (D'Oosterlinck et al. 2024, eq. 7):  loss = 1 - s(beta h_c) + s(beta h_r)."""
    h_c, h_r = _ratios(pi_c, pi_r, ref_c, ref_r)
    return _dpo_rewards(1 - torch.sigmoid(beta * h_c) + torch.sigmoid(beta * h_r), h_c, h_r, beta)


def dpo_apo_down(pi_c: Tensor, pi_r: Tensor, ref_c: Tensor, ref_r: Tensor, beta: float) -> PairLosses:
    """APO-down (eq. 8):  loss = s(beta h_c) + 1 - s(beta delta)."""
    h_c, h_r = _ratios(pi_c, pi_r, ref_c, ref_r)
    return _dpo_rewards(torch.sigmoid(beta * h_c) + (1 - torch.sigmoid(beta * (h_c - h_r))), h_c, h_r, beta)


def dpo_discopop(
    pi_c: Tensor, pi_r: Tensor, ref_c: Tensor, ref_r: Tensor, beta: float, tau: float = 0.05
) -> PairLosses:
    """DiscoPOP (Chris Lu et al. 2024, eq. 5), z = beta * delta, m = s(z / tau):

        loss = (1 - m) * (-log s(z)) + m * exp(-z)
    """
    h_c, h_r = _ratios(pi_c, pi_r, ref_c, ref_r)
    z = beta * (h_c - h_r)
    m = torch.sigmoid(z / tau)
    return _dpo_rewards(-F.logsigmoid(z) * (1 - m) + torch.exp(-z) * m, h_c, h_r, beta)


def chosen_nll(chosen_logp_sum: Tensor, chosen_tokens: Tensor) -> Tensor:
    """The SFT term on chosen completions as TRL computes it (DPO loss_type "sft", CPO's
    `cpo_alpha` term): a token-level mean over the whole batch, not a mean of per-pair means,

        nll = -sum_i pi_c,i / sum_i n_c,i       (pi_c,i summed over completion tokens)

    RPO (Pang et al. 2024) is, in TRL 1.16, loss_type [sigmoid, sft] with loss_weights [1, alpha].
    ORPO passes the chosen *whole sequence* (prompt included) here; see `orpo`.
    """
    return -chosen_logp_sum.sum() / chosen_tokens.sum()


# The DPO loss types TRL 1.16 knows (besides "sft", see `chosen_nll`), with the extra inputs each takes.
DPO_LOSSES: dict[str, Callable[..., PairLosses]] = {
    "sigmoid": dpo_sigmoid,
    "hinge": dpo_hinge,
    "ipo": dpo_ipo,
    "robust": dpo_robust,
    "exo_pair": dpo_exo_pair,
    "nca_pair": dpo_nca_pair,
    "bco_pair": dpo_bco_pair,
    "sppo_hard": dpo_sppo_hard,
    "aot": dpo_aot,
    "aot_unpaired": dpo_aot_unpaired,
    "apo_zero": dpo_apo_zero,
    "apo_down": dpo_apo_down,
    "discopop": dpo_discopop,
    "sigmoid_norm": dpo_sigmoid_norm,
}
_NEEDS_TOKENS = {"ipo", "sigmoid_norm"}
_NEEDS_SMOOTHING = {"robust", "exo_pair", "aot", "aot_unpaired"}


def dpo_loss(
    loss_type: str,
    pi_c: Tensor,
    pi_r: Tensor,
    ref_c: Tensor,
    ref_r: Tensor,
    beta: float,
    *,
    n_c: Tensor | None = None,
    n_r: Tensor | None = None,
    label_smoothing: float = 0.0,
    discopop_tau: float = 0.05,
) -> PairLosses:
    """One of DPO_LOSSES by TRL's name, given only the inputs that loss uses."""
    fn = DPO_LOSSES[loss_type]
    extra: dict[str, float | Tensor | None] = {}
    if loss_type in _NEEDS_TOKENS:
        extra = {"n_c": n_c, "n_r": n_r}
    if loss_type in _NEEDS_SMOOTHING:
        extra["label_smoothing"] = label_smoothing
    if loss_type == "discopop":
        extra["tau"] = discopop_tau
    return fn(pi_c, pi_r, ref_c, ref_r, beta=beta, **extra)


# --------------------------------------------------------------------------- reference-free: SimPO, ORPO


def simpo(pi_c_mean: Tensor, pi_r_mean: Tensor, beta: float, gamma: float, label_smoothing: float = 0.0) -> PairLosses:
    """SimPO (Meng et al. 2024, eq. 6) on per-token mean log-probs, TRL's CPOTrainer loss_type "simpo":

        z = beta * (pi_c_mean - pi_r_mean) - gamma
        loss = -(1 - eps) log s(z) - eps log s(-z)
        rewards = beta * pi_mean

    TRL writes z as beta * (pi_c_mean - pi_r_mean - gamma / beta), the same value. CPOConfig's
    `cpo_alpha` (default 1.0!) adds cpo_alpha * `chosen_nll` over the chosen completions; pure
    SimPO is cpo_alpha = 0.
    """
    z = beta * (pi_c_mean - pi_r_mean - gamma / beta)
    losses = -F.logsigmoid(z) * (1 - label_smoothing) - F.logsigmoid(-z) * label_smoothing
    return PairLosses(losses, beta * pi_c_mean.detach(), beta * pi_r_mean.detach())


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0, stable on both sides of -log 2."""
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


class ORPOLosses(NamedTuple):
    losses: Tensor  # per pair: -beta * log s(log_odds); TRL's loss is nll + mean(losses)
    chosen_rewards: Tensor
    rejected_rewards: Tensor
    log_odds: Tensor  # per pair, detached (TRL logs its mean as log_odds_chosen)
    log_odds_ratio: Tensor  # per pair log s(log_odds), detached (TRL logs its mean as log_odds_ratio)


def orpo(pi_c_mean: Tensor, pi_r_mean: Tensor, beta: float) -> ORPOLosses:
    """ORPO's odds-ratio term (Hong et al. 2024, eqs. 4-7) on per-token mean log-probs p = exp(pi_mean):

        log_odds = (pi_c_mean - pi_r_mean) - (log(1 - p_c) - log(1 - p_r))
        loss     = nll - beta * mean(log s(log_odds))          (beta is the paper's lambda)
        rewards  = beta * pi_mean

    where, in TRL 1.16, nll = `chosen_nll` over *every attended token of the chosen sequence,
    prompt included* (labels = input_ids where attention_mask == 1), not only the completion.
    """
    log_odds = (pi_c_mean - pi_r_mean) - (_log1mexp(pi_c_mean) - _log1mexp(pi_r_mean))
    ratio = F.logsigmoid(log_odds)
    return ORPOLosses(
        -beta * ratio,
        beta * pi_c_mean.detach(),
        beta * pi_r_mean.detach(),
        log_odds.detach(),
        ratio.detach(),
    )


# --------------------------------------------------------------------------- KTO


def kto_kl(policy_kl: Tensor, ref_kl: Tensor) -> Tensor:
    """KTO's reference point z0 (Ethayarajh et al. 2024, eq. 7) as TRL estimates it: the mean, over
    the batch, of policy minus reference log-probs of *mismatched* (prompt_i, completion_{i-1})
    rows, detached, clamped at 0:

        z0 = max(0, mean_i(pi_KL,i - ref_KL,i))

    Under several processes TRL averages the per-process means before clamping.
    """
    return (policy_kl - ref_kl).mean().detach().clamp(min=0)


class KTOLosses(NamedTuple):
    losses: Tensor  # per example, weighted; TRL's loss is their mean over all examples
    rewards: Tensor  # per example beta * (pi - ref), detached


def kto(
    pi: Tensor,
    ref: Tensor,
    desirable: Tensor,
    kl: Tensor,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> KTOLosses:
    """KTO (Ethayarajh et al. 2024, eq. 7), h = pi - ref per example, z0 = `kto_kl`:

        desirable:    loss = w_d * (1 - s(beta * (h - z0)))
        undesirable:  loss = w_u * (1 - s(beta * (z0 - h)))

    TRL's batch loss is the plain mean over all examples (not a mean per class).
    """
    h = pi - ref
    desirable = desirable.bool()
    losses = torch.where(
        desirable,
        desirable_weight * (1 - torch.sigmoid(beta * (h - kl))),
        undesirable_weight * (1 - torch.sigmoid(beta * (kl - h))),
    )
    return KTOLosses(losses, beta * h.detach())


# --------------------------------------------------------------------------- metrics


def pair_metrics(out: PairLosses, pi_c: Tensor, pi_r: Tensor) -> dict[str, float]:
    """TRL's logged preference metrics for one batch (DPO, CPO/SimPO, ORPO): means over pairs.

    `pi_c` / `pi_r` are the log-probs the method uses (sums for DPO, means for SimPO/ORPO).
    TRL logs one such value per micro-batch and its log averages those values (a mean of means).
    """
    c, r = out.chosen_rewards, out.rejected_rewards
    return {
        "rewards/chosen": c.mean().item(),
        "rewards/rejected": r.mean().item(),
        "rewards/accuracies": (c > r).float().mean().item(),
        "rewards/margins": (c - r).mean().item(),
        "logps/chosen": pi_c.detach().mean().item(),
        "logps/rejected": pi_r.detach().mean().item(),
    }


def kto_metrics(out: KTOLosses, pi: Tensor, desirable: Tensor, kl: Tensor) -> dict[str, float]:
    """KTOTrainer's metrics for one batch: per-class means (sum over the class / its count), the
    margin as the difference of those means, and `kl`. No `rewards/accuracies` (unpaired)."""
    desirable = desirable.bool()
    metrics = {"kl": float(kl)}
    if desirable.any():
        metrics["rewards/chosen"] = (out.rewards[desirable].nansum() / desirable.sum()).item()
        metrics["logps/chosen"] = (pi.detach()[desirable].nansum() / desirable.sum()).item()
    if (~desirable).any():
        metrics["rewards/rejected"] = (out.rewards[~desirable].nansum() / (~desirable).sum()).item()
        metrics["logps/rejected"] = (pi.detach()[~desirable].nansum() / (~desirable).sum()).item()
    if desirable.any() and (~desirable).any():
        metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
    return metrics
