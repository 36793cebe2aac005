"""tuner's preference losses reproduce TRL 1.16's, from TRL's own recorded log-probs.

The fixture (tests/fixtures/trl/preference/fixture.json, made by make_trl_fixture.py with TRL's
trainers on SmolLM2 + a fixed LoRA, one batch of 16 pairs per case) holds the per-sequence
log-probs TRL computed inside `compute_loss`, the loss it returned and the metrics it logged.
Feeding those log-probs to tuner.train.objectives.preference_loss must give TRL's loss and
metrics to 1e-6. Weight-free: no model is loaded here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tuner.train.objectives import preference_loss as pl

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "trl" / "preference" / "fixture.json"
DATA = json.loads(FIXTURE.read_text())
CASES = DATA["cases"]
TOL = 1e-6
PAIR_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                "logps/chosen", "logps/rejected")


def f32(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def close(ours: float, trl: float, what: str) -> None:
    assert abs(ours - trl) <= TOL * max(1.0, abs(trl)), f"{what}: tuner {ours!r} vs TRL {trl!r}"


def dpo_inputs(case: dict):
    lp, n = case["logps"], case["n_tokens"]
    return (f32(lp["policy_chosen"]), f32(lp["policy_rejected"]), f32(lp["ref_chosen"]), f32(lp["ref_rejected"]),
            f32(n["chosen"]), f32(n["rejected"]))


DPO_CASES = sorted(name for name, c in CASES.items() if c["trainer"] == "trl.DPOTrainer")


def test_fixture_covers_the_methods_and_policy_differs_from_reference():
    assert DATA["versions"]["trl"] == "1.16.0"
    for name in ("dpo_sigmoid", "dpo_ipo", "dpo_hinge", "dpo_robust", "dpo_rpo", "simpo", "cpo_simpo", "orpo", "kto"):
        assert name in CASES, name
    lp = CASES["dpo_sigmoid"]["logps"]
    gaps = [abs(p - r) for p, r in zip(lp["policy_chosen"] + lp["policy_rejected"], lp["ref_chosen"] + lp["ref_rejected"])]
    assert min(gaps) > 1e-3, "the fixture's LoRA must move every sequence away from the reference"
    assert len(lp["policy_chosen"]) == 16


@pytest.mark.parametrize("name", DPO_CASES)
def test_dpo_family_loss_and_metrics_match_trl(name):
    case = CASES[name]
    args = case["args"]
    pi_c, pi_r, ref_c, ref_r, n_c, n_r = dpo_inputs(case)
    weights = args["loss_weights"] or [1.0] * len(args["loss_type"])
    loss = torch.zeros(())
    pair = None
    for loss_type, weight in zip(args["loss_type"], weights):
        if loss_type == "sft":  # RPO's NLL term: token-level mean over the batch's chosen completions
            loss = loss + weight * pl.chosen_nll(pi_c, n_c)
            continue
        pair = pl.dpo_loss(loss_type, pi_c, pi_r, ref_c, ref_r, args["beta"], n_c=n_c, n_r=n_r,
                           label_smoothing=args["label_smoothing"], discopop_tau=args["discopop_tau"])
        assert pair.losses.shape == (len(pi_c),)
        loss = loss + weight * pair.losses.mean()
    close(float(loss), case["loss"], f"{name} loss")
    for key, value in pl.pair_metrics(pair, pi_c, pi_r).items():
        close(value, case["metrics"][key], f"{name} {key}")


def test_trl_116_ignores_label_smoothing_for_sigmoid():
    """TRL 1.16 dropped cDPO: `label_smoothing` with loss_type sigmoid changes nothing."""
    assert CASES["dpo_sigmoid_label_smoothing"]["args"]["label_smoothing"] == 0.1
    assert CASES["dpo_sigmoid_label_smoothing"]["loss"] == CASES["dpo_sigmoid"]["loss"]
    assert CASES["dpo_robust"]["loss"] != CASES["dpo_sigmoid"]["loss"]


def test_cdpo_is_the_label_mixture_of_dpo_and_swapped_dpo():
    """cDPO (TRL's sigmoid + label_smoothing before 1.0) has no 1.16 reference; it must equal
    (1 - eps) * DPO(pair) + eps * DPO(pair with chosen and rejected swapped), DPO being the
    fixture-proven `dpo_sigmoid`; eps = 0 is DPO itself."""
    pi_c, pi_r, ref_c, ref_r, _, _ = dpo_inputs(CASES["dpo_sigmoid"])
    forward = pl.dpo_sigmoid(pi_c, pi_r, ref_c, ref_r, 0.1).losses
    swapped = pl.dpo_sigmoid(pi_r, pi_c, ref_r, ref_c, 0.1).losses
    for eps in (0.0, 0.1, 0.3):
        got = pl.cdpo(pi_c, pi_r, ref_c, ref_r, 0.1, eps).losses
        assert float((got - ((1 - eps) * forward + eps * swapped)).abs().max()) <= 1e-6, eps
    close(float(pl.cdpo(pi_c, pi_r, ref_c, ref_r, 0.1, 0.0).losses.mean()), CASES["dpo_sigmoid"]["loss"], "cdpo eps=0")


def test_rpo_is_dpo_plus_weighted_chosen_nll():
    rpo, dpo = CASES["dpo_rpo"], CASES["dpo_sigmoid"]
    assert rpo["args"]["loss_type"] == ["sigmoid", "sft"]
    pi_c, _, _, _, n_c, _ = dpo_inputs(rpo)
    nll = float(pl.chosen_nll(pi_c, n_c))
    assert nll > 0
    close(dpo["loss"] + rpo["args"]["loss_weights"][1] * nll, rpo["loss"], "rpo = dpo + alpha * nll")


def test_ipo_is_length_normalised():
    """TRL 1.16's IPO divides each log-ratio by its completion length (confirmed with the authors,
    says TRL); the sum-based formula gives a different loss on this fixture."""
    case = CASES["dpo_ipo"]
    pi_c, pi_r, ref_c, ref_r, _, _ = dpo_inputs(case)
    beta = case["args"]["beta"]
    unnormalised = (((pi_c - ref_c) - (pi_r - ref_r) - 1 / (2 * beta)) ** 2).mean()
    assert abs(float(unnormalised) - case["loss"]) > 1e-2


@pytest.mark.parametrize("name", ["simpo", "cpo_simpo"])
def test_simpo_matches_trl_cpo_trainer(name):
    case = CASES[name]
    args, lp, n = case["args"], case["logps"], case["n_tokens"]
    pi_c, pi_r = f32(lp["policy_chosen_mean"]), f32(lp["policy_rejected_mean"])
    out = pl.simpo(pi_c, pi_r, args["beta"], args["simpo_gamma"], args["label_smoothing"])
    # the NLL on the chosen completions, from TRL's own cross-entropy values (see test_nll_kernels...)
    nll = pl.chosen_nll(-f32(lp["chosen_nll_sum"]), f32(n["chosen_nll"]))
    assert n["chosen_nll"] == n["chosen"]
    loss = out.losses.mean() + args["cpo_alpha"] * nll
    close(float(loss), case["loss"], f"{name} loss")
    for key, value in pl.pair_metrics(out, pi_c, pi_r).items():
        close(value, case["metrics"][key], f"{name} {key}")
    # TRL skips the term (and logs 0.0) when cpo_alpha is 0
    close(float(nll) if args["cpo_alpha"] else 0.0, case["metrics"]["nll_loss"], f"{name} nll_loss")


def test_nll_kernels_agree_to_float32_rounding():
    """TRL's CPO/ORPO NLL is nn.CrossEntropyLoss on the logits; the same mean from the log-softmax
    sums the losses use differs only by fp32 kernel rounding (~1e-5 relative at most here)."""
    for name, sums_key, n_key in (("cpo_simpo", "policy_chosen_sum", "chosen"),
                                  ("orpo", "policy_chosen_full_sequence_sum", "chosen_full_sequence")):
        lp, n = CASES[name]["logps"], CASES[name]["n_tokens"]
        from_logps = float(pl.chosen_nll(f32(lp[sums_key]), f32(n[n_key])))
        assert n[n_key] == n["chosen_nll"]
        assert abs(from_logps - CASES[name]["metrics"]["nll_loss"]) <= 1e-5 * CASES[name]["metrics"]["nll_loss"]


def test_simpo_sequence_logps_are_means_of_the_sums():
    lp, n = CASES["simpo"]["logps"], CASES["simpo"]["n_tokens"]
    ratio = f32(lp["policy_chosen_sum"]) / f32(n["chosen"])
    assert float((ratio - f32(lp["policy_chosen_mean"])).abs().max()) <= 1e-6


def test_orpo_matches_trl():
    case = CASES["orpo"]
    beta, lp, n = case["args"]["beta"], case["logps"], case["n_tokens"]
    pi_c, pi_r = f32(lp["policy_chosen_mean"]), f32(lp["policy_rejected_mean"])
    out = pl.orpo(pi_c, pi_r, beta)
    # TRL's ORPO NLL runs over the whole chosen sequence, prompt tokens included
    nll = pl.chosen_nll(-f32(lp["chosen_nll_sum"]), f32(n["chosen_nll"]))
    assert n["chosen_nll"] == n["chosen_full_sequence"] and sum(n["chosen_full_sequence"]) > sum(n["chosen"])
    close(float(nll + out.losses.mean()), case["loss"], "orpo loss")
    m = case["metrics"]
    close(float(nll), m["nll_loss"], "orpo nll_loss")
    close(float(out.log_odds_ratio.mean()), m["log_odds_ratio"], "orpo log_odds_ratio")
    close(float(out.log_odds.mean()), m["log_odds_chosen"], "orpo log_odds_chosen")
    for key, value in pl.pair_metrics(out, pi_c, pi_r).items():
        close(value, m[key], f"orpo {key}")


def test_orpo_log1mexp_is_stable_near_zero_and_far_below():
    x = torch.tensor([-1e-6, -0.5, -0.7, -30.0], dtype=torch.float64)
    assert float((pl._log1mexp(x) - torch.log(1 - torch.exp(x))).abs().max()) <= 1e-9


def test_kto_matches_trl():
    case = CASES["kto"]
    args, lp = case["args"], case["logps"]
    desirable = torch.tensor(lp["label"])
    assert desirable.sum() == 16 and len(desirable) == 32
    kl = pl.kto_kl(f32(lp["policy_KL"]), f32(lp["ref_KL"]))
    close(float(kl), case["metrics"]["kl"], "kto kl")
    pi, ref = f32(lp["policy"]), f32(lp["ref"])
    out = pl.kto(pi, ref, desirable, kl, args["beta"], args["desirable_weight"], args["undesirable_weight"])
    close(float(out.losses.mean()), case["loss"], "kto loss")
    metrics = pl.kto_metrics(out, pi, desirable, kl)
    assert "rewards/accuracies" not in metrics and "rewards/accuracies" not in case["metrics"]
    for key, value in metrics.items():
        close(value, case["metrics"][key], f"kto {key}")


def test_kto_kl_rows_pair_each_prompt_with_the_previous_completion():
    """TRL builds the KL rows by rotating completions by one inside each batch of
    per_device_train_batch_size rows: row i gets completion i-1 (row 0 the last one)."""
    rows = CASES["kto"]["tokens"]
    completions = [r["completion_ids"] for r in rows]
    assert [r["KL_completion_ids"] for r in rows] == [completions[-1]] + completions[:-1]


def test_kto_kl_is_clamped_at_zero():
    assert float(pl.kto_kl(torch.tensor([-3.0, -1.0]), torch.tensor([0.0, 0.0]))) == 0.0


def test_dpo_tokens_share_the_prompt_and_end_with_the_template_end_of_turn():
    """TRL's conversational tokenization: prompt = template with generation prompt, completion =
    the rest of prompt+completion rendered together (SmolLM2: content, <|im_end|>, newline)."""
    im_end, newline = 2, 198
    for row in CASES["dpo_sigmoid"]["tokens"]:
        assert row["chosen_ids"][-2:] == [im_end, newline] and row["rejected_ids"][-2:] == [im_end, newline]
        assert row["prompt_ids"][:1] == [1]  # <|im_start|> (system turn, injected or given)
    for row in CASES["dpo_sigmoid_plain"]["tokens"]:
        assert row["chosen_ids"][-1] == im_end  # plain text: TRL appends the eos token's text


def test_truncated_case_keeps_the_start():
    case = CASES["dpo_sigmoid_truncated"]
    limit = case["args"]["max_length"]
    assert case["args"]["truncation_mode"] == "keep_start"
    widths = [sum(m) for m in case["batch"]["attention_mask"]]
    assert max(widths) <= limit
    full = [len(r["prompt_ids"]) + len(r["chosen_ids"]) for r in case["tokens"]]
    assert any(w > limit for w in full), "the case must truncate something"
    assert all(len(r["prompt_ids"]) < limit for r in case["tokens"])  # TRL drops prompts that fill max_length


def test_metric_names_are_trls():
    for name in DPO_CASES + ["simpo", "orpo"]:
        assert set(PAIR_METRICS) <= set(CASES[name]["metrics"]), name
    assert math.isfinite(CASES["kto"]["metrics"]["kl"])
