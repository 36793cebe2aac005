"""tuner's preference objectives against TRL 1.16 on the real SmolLM2: the same token ids, the
same weights (the base + the fixture's fixed, non-zero LoRA, so that policy and reference
differ), one batch of all the fixture's pairs, fp32: the loss, the logged metrics and the
gradients of every LoRA weight equal what TRL's own trainers computed (tests/fixtures/trl/,
made by tests/fixtures/trl/make_trl_fixture.py in the bench venv).

The batches are built from TRL's token ids (its chat-template tokenization, the extra EOS its
CPO/ORPO trainers append), so that this compares the losses and gradients alone; tuner's own
tokenization of the same pairs is compared in test_preference_data.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import make_config, write_jsonl

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "trl" / "preference"
CASES = json.loads((FIXTURE / "fixture.json").read_text())["cases"]
for _case in CASES.values():  # the fixture stores a case's tokens once: "same as dpo_sigmoid"
    if isinstance(_case.get("tokens"), str):
        _case["tokens"] = CASES[_case["tokens"].removeprefix("same as ")]["tokens"]
TOL = 1e-4

# fixture case -> tuner's config keys for it
CONFIGS = {
    "dpo_sigmoid": {"rl": "dpo", "rl_beta": 0.1},
    "dpo_sigmoid_truncated": {"rl": "dpo", "rl_beta": 0.1},
    "dpo_sigmoid_plain": {"rl": "dpo", "rl_beta": 0.1},
    "dpo_ipo": {"rl": "ipo", "rl_beta": 0.1},
    "dpo_hinge": {"rl": "dpo", "rl_beta": 1.0, "dpo_loss_type": ["hinge"]},
    "dpo_robust": {"rl": "dpo", "rl_beta": 0.1, "dpo_loss_type": ["robust"], "dpo_label_smoothing": 0.1},
    "dpo_rpo": {"rl": "dpo", "rl_beta": 0.1, "rpo_alpha": 0.5},
    "dpo_sigmoid_ref_adapter": {"rl": "dpo", "rl_beta": 0.1},
    "simpo": {"rl": "simpo", "rl_beta": 2.0, "simpo_gamma": 0.5, "cpo_alpha": 0.0},
    "cpo_simpo": {"rl": "simpo", "rl_beta": 2.0, "simpo_gamma": 0.5},
    "orpo": {"rl": "orpo", "orpo_alpha": 0.1},
    "kto": {"rl": "kto", "rl_beta": 0.1, "kto_desirable_weight": 1.0, "kto_undesirable_weight": 1.5},
}
METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
           "logps/rejected", "log_odds_ratio", "log_odds_chosen", "nll_loss", "kl")


def pair_rows(case: dict) -> dict[str, list]:
    """TRL's sequences of a case as tuner's prepared pair rows."""
    if "batch" in case:  # DPO: the collated batch, chosen rows first, with its completion mask
        b = case["batch"]
        seqs = []
        for ids, mask, completion in zip(b["input_ids"], b["attention_mask"], b["completion_mask"]):
            keep = [i for i, m in enumerate(mask) if m]
            ids = [ids[i] for i in keep]
            seqs.append((ids, [t if completion[i] else -100 for t, i in zip(ids, keep)]))
        n = len(seqs) // 2
        chosen, rejected = seqs[:n], seqs[n:]
    elif "chosen_input_ids" in case["tokens"][0]:  # CPO / ORPO: TRL's own input_ids and labels per side
        chosen = [(t["chosen_input_ids"], t["chosen_labels"]) for t in case["tokens"]]
        rejected = [(t["rejected_input_ids"], t["rejected_labels"]) for t in case["tokens"]]
    else:  # DPO: TRL's prompt and completion ids (nothing truncated: max_length 1024)
        chosen = [(t["prompt_ids"] + t["chosen_ids"], [-100] * len(t["prompt_ids"]) + t["chosen_ids"])
                  for t in case["tokens"]]
        rejected = [(t["prompt_ids"] + t["rejected_ids"], [-100] * len(t["prompt_ids"]) + t["rejected_ids"])
                    for t in case["tokens"]]
    prompt = [next(i for i, lab in enumerate(labs) if lab != -100) for _, labs in chosen]
    return {"chosen_input_ids": [c[0] for c in chosen], "chosen_labels": [c[1] for c in chosen],
            "rejected_input_ids": [r[0] for r in rejected], "rejected_labels": [r[1] for r in rejected],
            "prompt_len": prompt}


def unpaired_rows(case: dict) -> dict[str, list]:
    rows = case["tokens"]
    return {"input_ids": [r["prompt_ids"] + r["completion_ids"] for r in rows],
            "labels": [[-100] * len(r["prompt_ids"]) + r["completion_ids"] for r in rows],
            "prompt_len": [len(r["prompt_ids"]) for r in rows], "desirable": [bool(r["label"]) for r in rows]}


@pytest.fixture(scope="module")
def base(smol_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(smol_model_dir, dtype=torch.float32, attn_implementation="sdpa")


def policy(base, name: str, tmp_path: Path):
    """The base + the fixture's LoRA (trainable); for the reference-adapter case, that adapter
    with every lora_B doubled, the fixture's adapter being the reference (lora_model_dir)."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(base, str(FIXTURE / "adapter"), is_trainable=True)
    if name == "dpo_sigmoid_ref_adapter":
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.mul_(2.0)
    model.config.use_cache = False
    return model


# make test keeps DPO's sigmoid case (packed and padded); the other eleven (about a minute each on
# 2 cores) run in make test-slow
FAST = ("dpo_sigmoid",)


@pytest.mark.smollm2
@pytest.mark.parametrize("name", [c if c in FAST else pytest.param(c, marks=pytest.mark.slow) for c in CONFIGS])
def test_loss_metrics_and_gradients_equal_trl(base, smol_model_dir, name, tmp_path):
    from datasets import Dataset

    from tuner.train.objectives import objective_for
    from tuner.train.objectives.base import combined_loss

    case = CASES[name]
    values = CONFIGS[name]
    data = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "c", "rejected": "r", "completion": "c",
                                                   "label": True}])
    extra = {"lora_model_dir": str(FIXTURE / "adapter")} if name == "dpo_sigmoid_ref_adapter" else {}
    cfg = make_config(tmp_path, base_model=str(smol_model_dir), learning_rate=1e-4,
                      max_steps=1, micro_batch_size=len(case["tokens"]), adapter="lora",
                      lora_target_modules=["q_proj", "v_proj"], datasets=[{"path": str(data), "type": "passthrough"}],
                      **values, **extra)
    model = policy(base, name, tmp_path)
    try:
        objective = objective_for(cfg)
        module = objective.wrap(model)
        rows = Dataset.from_dict(unpaired_rows(case) if name == "kto" else pair_rows(case))
        units = list(range(rows.num_rows))
        for packed in (True, False):  # padding-free and padded: the same numbers
            batches = objective.batches(rows, cfg, 2, evaluation=False)
            batches.packed = packed
            batch = batches.batch(units)
            model.zero_grad()
            sums = objective.sums(module(**batch))
            counts = objective.counts(batch)
            loss = sum(sums[t] / counts[c] for t, c in objective.loss_terms.items())
            loss.backward()
            assert float(loss.detach()) == pytest.approx(case["loss"], abs=TOL), (name, packed)
            reported = objective.report({k: float(v) for k, v in sums.items()}, counts, evaluation=False)
            assert reported["loss"] == pytest.approx(case["loss"], abs=TOL)
            for key in METRICS:
                if key in case["metrics"] and key in reported:
                    # log-prob sums of ~20 tokens: fp32 summation order alone moves them by ~1e-5 relative
                    assert reported[key] == pytest.approx(case["metrics"][key], rel=1e-5, abs=TOL), (name, key)
            expected = _expected_grads(name)
            got = {n.replace(".default", ""): p.grad for n, p in model.named_parameters()
                   if p.requires_grad and p.grad is not None}
            assert set(got) == set(expected)
            for key, grad in expected.items():
                # relative to the gradient's size: IPO's squared loss gives gradients ~50x DPO's, where
                # fp32 summation order alone moves single elements by a few 1e-4 (measured 4e-4)
                error = float((got[key] - grad).norm() / grad.norm().clamp_min(1e-12))
                assert error <= 1e-3, (name, key, error, (got[key] - grad).abs().max())
            assert combined_loss(objective, {k: float(v) for k, v in sums.items()}, counts) == pytest.approx(
                case["loss"], abs=TOL)
    finally:
        model.unload()  # the shared base without the adapter layers again


def _expected_grads(name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(FIXTURE / CASES[name]["grads_file"]))
