"""Preference training learns a rule on the real SmolLM2 (LoRA): answers must end with " Over."
(examples/data/make_preference_data.py; chosen and rejected differ only by it, and the held-out
questions are not in the training pairs). Held-out pairwise reward accuracy after a few steps
of the shipped examples (examples/dpo.yml, orpo.yml, kto.yml; fewer steps, ORPO's settings below):

  DPO  eval_rewards/accuracies (implicit reward beta * (log pi - log pi_ref) of the chosen
       answer above the rejected one's) > 0.9; before the first update it is 0 (policy =
       reference, every reward 0: the first step's logged accuracy, which the test checks);
  ORPO eval_rewards/accuracies (its reference-free reward, beta * the mean log-prob) > 0.8,
       from below 0.5 on the first step's pairs before any update (the rule's tokens are
       unlikely at first: the chosen answer's mean log-prob is the lower one). ORPO learns
       this rule slowly at the example's settings (its NLL term covers the prompt too, and the
       rule has to become likely in absolute terms, not relative to a reference: after 6 steps
       at lr 2e-4 the held-out accuracy was still 0), so this run takes orpo_alpha 1.0,
       lr 1e-3 and no warm-up (train accuracy 1.0 from the fourth step);
  KTO  trained on the same pairs unpaired (one desirable and one undesirable example each);
       the trained adapter's implicit-reward accuracy on the held-out *pairs* > 0.8 (0 before
       training: the adapter starts as the identity).

Slow (4-6 SmolLM2 steps and a 64-pair evaluation per method: minutes on 2 cores, far longer
when the cores are shared): `make test-slow`, not make test."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import read_metrics
from tuner.config import load_config

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.smollm2, pytest.mark.slow]


def run(example: str, tmp_path: Path, steps: int, *extra: str):
    """The shipped example for `steps` optimizer steps (8 pairs or 8 KTO examples each; the
    cosine schedule warms up over 2 steps from 0, so the first step does not move the weights)."""
    from tuner.train.loop import train

    cfg = load_config(REPO / "examples" / example, [
        "--dataset_prepared_path", str(tmp_path / "prepared"), "--output_dir", str(tmp_path / "out"),
        "--max_steps", str(steps), "--num_epochs", "null", *extra,
    ])
    result = train(cfg)
    metrics = read_metrics(result.output_dir)
    first = next(m for m in metrics if m.get("step") == 1 and "loss" in m)
    evals = [m for m in metrics if "eval_loss" in m]
    return first, evals, result


def heldout_implicit_accuracy(out_dir: Path, tmp_path: Path) -> float:
    """The trained adapter's implicit-reward accuracy on the held-out pairs (reference: the base)."""
    import contextlib

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tuner.data.pipeline import prepare
    from tuner.models.inputs import load_inputs
    from tuner.train.objectives import objective_for
    from tuner.train.step import evaluate

    cfg = load_config(REPO / "examples" / "dpo.yml", ["--dataset_prepared_path", str(tmp_path / "prepared-pairs"),
                                                      "--micro_batch_size", "8"])
    inputs = load_inputs(cfg)
    data = prepare(cfg, inputs.tokenizer, inputs.tokenizer_files)
    base = AutoModelForCausalLM.from_pretrained(inputs.base.path, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(out_dir))
    objective = objective_for(cfg)

    class OneProcess:  # what evaluate needs of an Accelerator, for one process on this CPU
        process_index, num_processes, device = 0, 1, torch.device("cpu")

        def autocast(self):
            # fp32, as bf16: auto trains on a CPU without AMX / AVX512-BF16 (there torch's bf16
            # matmul is a slow fallback: a 64-pair evaluation under bf16 autocast took 45 minutes)
            return contextlib.nullcontext()

    totals = evaluate(objective.wrap(model), objective.batches(data.eval, cfg, inputs.tokenizer.pad_token_id, True),
                      8, OneProcess(), objective)
    return objective.report(totals.sums, totals.counts, evaluation=True)["rewards/accuracies"]


def test_dpo_learns_the_rule(tmp_path):
    first, evals, _ = run("dpo.yml", tmp_path, 4)
    print("dpo: step 1", first, "final eval", evals[-1])  # shown by pytest -rP
    assert first["rewards/accuracies"] == 0.0 and first["rewards/margins"] == 0.0, first
    assert evals[-1]["eval_pairs"] == 64
    assert evals[-1]["eval_rewards/accuracies"] > 0.9, evals[-1]
    assert evals[-1]["eval_rewards/margins"] > 0, evals[-1]


def test_orpo_learns_the_rule(tmp_path):
    first, evals, _ = run("orpo.yml", tmp_path, 6, "--orpo_alpha", "1.0", "--learning_rate", "1e-3",
                          "--warmup_steps", "0")
    print("orpo: step 1", first, "final eval", evals[-1])
    assert first["rewards/accuracies"] < 0.5, first
    assert evals[-1]["eval_pairs"] == 64
    assert evals[-1]["eval_rewards/accuracies"] > 0.8, evals[-1]


def test_kto_learns_the_rule(tmp_path):
    # kto.yml's own evaluation (unpaired held-out examples, no accuracy) is left out: the check
    # below measures the held-out pairs instead
    _, _, result = run("kto.yml", tmp_path, 6, "--test_datasets", "null")
    accuracy = heldout_implicit_accuracy(result.output_dir, tmp_path)
    print("kto: held-out pairwise implicit-reward accuracy", accuracy)
    assert accuracy > 0.8
