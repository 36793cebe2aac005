"""tuner's reward-model loss against TRL 1.16's RewardTrainer on the real SmolLM2: the same token
ids (TRL's own chat-template tokenization of the 16 pairs), the same weights (SmolLM2 as a
sequence classifier, loaded by tuner's loader, with the fixture's fixed score head), one batch of
all 16 pairs in fp32: the loss (with and without TRL's centering term), the rewards, accuracy,
margin and the gradient of the score head equal what TRL's trainer computed
(tests/fixtures/trl/reward/, made by tests/fixtures/trl/make_trl_reward_fixture.py in the bench
venv). tuner reads the pairs padding-free (one packed row) and padded; both agree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import make_config, write_jsonl

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "trl" / "reward"
CASES = json.loads((FIXTURE / "fixture.json").read_text())["cases"]
TOL = 1e-4


@pytest.fixture(scope="module")
def loaded(tmp_path_factory, smol_model_dir):
    from safetensors.torch import load_file

    from tuner.models.heads import REWARD_HEAD
    from tuner.models.inputs import load_inputs
    from tuner.models.load import load_model

    tmp = tmp_path_factory.mktemp("reward-parity")
    data = write_jsonl(tmp / "d.jsonl", [{"messages": [{"role": "user", "content": "x"}], "chosen": "a", "rejected": "b"}])
    cfg = make_config(tmp, base_model=str(smol_model_dir), reward_model=True, learning_rate=1e-4, num_epochs=1,
                      datasets=[{"path": str(data), "type": "chat_template.default"}])
    inputs = load_inputs(cfg)
    model = load_model(cfg.model, inputs.base, inputs.tokenizer, torch.float32, objective="reward", head=REWARD_HEAD)
    model.load_state_dict(load_file(str(FIXTURE / "score.safetensors")), strict=False)
    model.requires_grad_(False).score.requires_grad_(True)  # the head's gradient is compared: no backbone backward
    return cfg, model


def batch_of(case: dict, packed: bool) -> dict:
    from datasets import Dataset

    from tuner.data.pairs import PairBatches

    rows = Dataset.from_dict({"chosen_input_ids": case["chosen_ids"], "chosen_labels": case["chosen_ids"],
                              "rejected_input_ids": case["rejected_ids"], "rejected_labels": case["rejected_ids"]})
    return PairBatches(rows, case["pad_token_id"], packed=packed).batch(list(range(rows.num_rows)))


def test_reward_loss_equals_trl_reward_trainer(loaded):
    """One padding-free forward of the 16 pairs through tuner's reward head code; each case's loss
    (plain Bradley-Terry, and with the centering term) and its score-head gradient from it."""
    from safetensors.torch import load_file

    from tuner.models.heads import sequence_logits
    from tuner.train.objectives.reward import BradleyTerry, pair_sums

    cfg, model = loaded
    base = CASES["bradley_terry"]
    assert all(c["chosen_ids"] == base["chosen_ids"] and c["rejected_ids"] == base["rejected_ids"]
               for c in CASES.values())
    assert model.config.pad_token_id == base["config_pad_token_id"]
    batch = batch_of(base, packed=True)
    objective = BradleyTerry(cfg)
    n = objective.counts(batch)["pairs"]
    assert n == 16
    # what RewardLoss.forward does (sequence_logits, then pair_sums), with the rewards kept for both cases
    inputs = {k: batch[k] for k in ("input_ids", "position_ids")}
    rewards = sequence_logits(model, inputs, batch["sequence"], 2 * n)[:, 0]
    for name, case in sorted(CASES.items()):
        model.zero_grad(set_to_none=True)
        case_sums = pair_sums(rewards[:n], rewards[n:], case["center_rewards_coefficient"])
        (case_sums["loss"] / n).backward(retain_graph=True)
        values = objective.report({k: float(v.detach()) for k, v in case_sums.items()}, {"pairs": n}, evaluation=False)
        assert values["loss"] == pytest.approx(case["loss"], abs=TOL), name
        assert values["accuracy"] == pytest.approx(case["metrics"]["accuracy"], abs=1e-9)
        assert values["margin"] == pytest.approx(case["metrics"]["margin"], abs=TOL)
        chosen, rejected = torch.tensor(case["rewards_chosen"]), torch.tensor(case["rewards_rejected"])
        assert values["rewards/chosen"] == pytest.approx(float(chosen.mean()), abs=TOL)
        assert values["rewards/rejected"] == pytest.approx(float(rejected.mean()), abs=TOL)
        assert torch.allclose(rewards[:n].detach().double(), chosen.double(), atol=TOL)
        grad = model.score.weight.grad
        want = load_file(str(FIXTURE / "grads" / f"{name}.safetensors"))["score.weight"]
        assert float((grad - want).abs().max()) < TOL * max(1.0, float(want.abs().max())), name


@pytest.mark.slow
def test_padded_pairs_read_the_same_rewards(loaded):
    from tuner.models.heads import sequence_logits

    _, model = loaded
    case = CASES["bradley_terry"]
    batch = batch_of(case, packed=False)
    with torch.no_grad():
        rewards = sequence_logits(model, {k: batch[k] for k in ("input_ids", "attention_mask")}, batch["sequence"], 32)
    want = torch.tensor(case["rewards_chosen"] + case["rewards_rejected"])
    assert torch.allclose(rewards[:, 0].double(), want.double(), atol=TOL)
