"""tuner's GRPO against TRL 1.16's GRPOTrainer: the same tiny Llama (seed 0, checked by the sha256
of its weights) with the fixture's non-zero LoRA, the same prompts, the same fixed completions
and the same reward functions (tests/fixtures/trl/grpo_rewards.py), fp32. For each loss_type:
tuner's prompt tokens, rewards and advantages equal TRL's, and the loss of one optimizer step and
the gradient of every LoRA weight equal what TRL's compute_loss gave (1e-4). The fixture is made
by tests/fixtures/trl/make_trl_grpo_fixture.py in the bench venv.

The step also runs as two micro-batches (gradient accumulation 2): for grpo, dapo and dr_grpo,
normalised over the whole step, the loss and gradients are those of the one batch."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import make_config, make_tiny_model, write_jsonl

TRL_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "trl"
FIXTURE = json.loads((TRL_DIR / "grpo" / "fixture.json").read_text())
TOL = 1e-4


def _sha(model) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, smol_tokenizer_dir) -> Path:
    from transformers import AutoModelForCausalLM

    out = make_tiny_model(tmp_path_factory.mktemp("grpo-tiny"), "llama", smol_tokenizer_dir, seed=0)
    assert _sha(AutoModelForCausalLM.from_pretrained(out)) == FIXTURE["tiny_model"]["state_sha256"]
    return out


def _config(tmp_path: Path, tiny_dir: Path, case: dict, accumulation: int):
    shutil.copy(TRL_DIR / "grpo_rewards.py", tmp_path / "grpo_rewards.py")  # found next to the config
    data = write_jsonl(tmp_path / "prompts.jsonl", FIXTURE["rows"])
    n = len(FIXTURE["completion_ids"])
    return make_config(
        tmp_path, base_model=str(tiny_dir), rl="grpo", datasets=[{"path": str(data), "type": "chat_template"}],
        adapter="lora", lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_target_modules=["q_proj", "v_proj"],
        micro_batch_size=n // accumulation, gradient_accumulation_steps=accumulation, max_steps=1,
        learning_rate=1e-5, output_dir=str(tmp_path / "out"), dataset_prepared_path=str(tmp_path / "prepared"),
        trl={"num_generations": FIXTURE["num_generations"], "max_completion_length": FIXTURE["max_completion_length"],
             "reward_funcs": ["grpo_rewards.length_reward", "grpo_rewards.answer_reward"], "reward_weights": [1.0, 0.5],
             **case["config"]})


def _step_inputs(case: dict, objective, tok, acc, accumulation: int):
    """The fixture's completions scored by tuner's reward code and batched as tuner's rollout batches them:
    (per-function rewards, rewards, advantages, zero-std groups, micro-batches, completion mask, truncated)."""
    from tuner.train.objectives.grpo import _completion_mask, _left_padded, _micro_batch
    from tuner.train.rewards import score

    rows = [r for r in FIXTURE["rows"] for _ in range(FIXTURE["num_generations"])]
    texts = tok.batch_decode(FIXTURE["completion_ids"], skip_special_tokens=True)
    per_func = torch.tensor(score(objective.funcs, [r["prompt"] for r in rows],
                                  [[{"role": "assistant", "content": t}] for t in texts], FIXTURE["completion_ids"],
                                  {"answer": [r["answer"] for r in rows]}), dtype=torch.float32).T
    rewards, advantages, zero_std = objective._advantages(per_func, acc)
    torch.testing.assert_close(advantages, torch.tensor(case["advantages"]), atol=1e-5, rtol=0)
    prompt_ids, prompt_mask = _left_padded(FIXTURE["cases"]["grpo"]["prompt_ids"], tok.pad_token_id)
    width = max(len(c) for c in FIXTURE["completion_ids"])
    completion_ids = torch.tensor([c + [tok.pad_token_id] * (width - len(c)) for c in FIXTURE["completion_ids"]])
    completion_mask, truncated = _completion_mask(completion_ids, [tok.eos_token_id])
    ids = torch.cat([prompt_ids, completion_ids], 1)
    mask = torch.cat([prompt_mask, completion_mask], 1)
    size = len(rows) // accumulation
    batches = [_micro_batch(ids[i : i + size], mask[i : i + size], prompt_ids.shape[1], completion_mask[i : i + size],
                            advantages[i : i + size]) for i in range(0, len(rows), size)]
    return per_func, rewards, advantages, zero_std, batches, completion_mask, truncated


def _model(tiny_dir: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    return PeftModel.from_pretrained(base, TRL_DIR / "grpo" / "adapter", is_trainable=True)


def _check_grads(model, path: Path, name: str) -> None:
    from safetensors.torch import load_file

    want = load_file(str(path))
    got = {n.replace(".default", ""): p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(got) == set(want)
    for key, grad in want.items():
        torch.testing.assert_close(got[key], grad, atol=TOL, rtol=0, msg=lambda m: f"{name}: {key}\n{m}")


@pytest.mark.parametrize("accumulation", [1, 2])
@pytest.mark.parametrize("name", list(FIXTURE["cases"]))
def test_grpo_matches_trl(tmp_path, tiny_dir, name, accumulation):
    from accelerate import Accelerator
    from transformers import AutoTokenizer

    from tuner.data.formats import EncodeContext
    from tuner.data.formats.prompts import Prompts
    from tuner.train.objectives.grpo import GRPO
    from tuner.train.step import accumulate_gradients

    case = FIXTURE["cases"][name]
    if name == "bnpo" and accumulation > 1:
        pytest.skip("TRL's bnpo is a mean per micro-batch: accumulation changes it, in TRL as in tuner")
    cfg = _config(tmp_path, tiny_dir, case, accumulation)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    g = FIXTURE["num_generations"]

    # the prompts as tuner's data stage tokenizes them: TRL's ids
    ds = cfg.data.datasets[0]
    encoded = Prompts().encode_many(FIXTURE["rows"], ds, EncodeContext(tok, template=tok.chat_template))
    assert [e[0] for e in encoded for _ in range(g)] == case["prompt_ids"]

    objective = GRPO(cfg)
    acc = Accelerator(cpu=True)
    per_func, rewards, advantages, zero_std, batches, completion_mask, truncated = _step_inputs(
        case, objective, tok, acc, accumulation)
    model = _model(tiny_dir)
    module = objective.wrap(model).train()
    totals = accumulate_gradients(module, batches, acc, objective)

    assert totals.loss == pytest.approx(case["loss"], abs=TOL)
    _check_grads(model, TRL_DIR / "grpo" / "grads" / f"{name}.safetensors", name)
    # the metrics TRL logged for the step (its `kl` is a token mean over the step, as tuner's)
    stats = objective._stats(per_func, rewards, advantages, zero_std, completion_mask.sum(-1), truncated)
    values = objective.report({**totals.sums, **{k: float(v) for k, v in stats.items()}}, totals.counts, evaluation=True)
    names = ["reward", "reward_std", "frac_reward_zero_std", "completions/mean_length", "completions/clipped_ratio",
             "clip_ratio/region_mean", "rewards/length_reward/mean", "rewards/length_reward/std",
             "rewards/answer_reward/mean", "rewards/answer_reward/std"] + (["kl"] if case["config"]["beta"] else [])
    for metric in names:
        assert values[metric] == pytest.approx(case["metrics"][metric], abs=1e-5), metric


@pytest.mark.parametrize("accumulation", [1, 2])
@pytest.mark.parametrize("name", list(FIXTURE["iterated"]))
def test_second_update_of_a_rollout_matches_trl(tmp_path, tiny_dir, name, accumulation):
    """num_iterations 2: tuner's rollout keeps the policy's log-probs of the completions (TRL's
    old_per_token_logps at theta0); after an update (theta1, TRL's), the step that trains on the same
    rollout again has TRL's loss, gradients and clip ratios."""
    from accelerate import Accelerator
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from tuner.train.objectives.grpo import GRPO
    from tuner.train.step import accumulate_gradients

    case = FIXTURE["iterated"][name]
    if case["config"]["loss_type"] == "bnpo" and accumulation > 1:
        pytest.skip("TRL's bnpo is a mean per micro-batch: accumulation changes it, in TRL as in tuner")
    cfg = _config(tmp_path, tiny_dir, case, accumulation)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    objective = GRPO(cfg)
    assert objective.updates_per_rollout == 2
    acc = Accelerator(cpu=True)
    *_, batches, completion_mask, _ = _step_inputs(case, objective, tok, acc, accumulation)
    model = _model(tiny_dir)
    module = objective.wrap(model).train()
    objective._sample = lambda *args: batches  # the fixture's completions instead of sampling
    first = objective.rollout(module, [], acc, 0)

    old = torch.cat([torch.nn.functional.pad(b["old_logps"], (0, completion_mask.shape[1] - b["old_logps"].shape[1]))
                     for b in first])
    want = torch.tensor(case["old_per_token_logps"])
    kept = completion_mask.bool()
    assert completion_mask.tolist() == case["completion_mask"]
    torch.testing.assert_close(old[kept], want[kept], atol=TOL, rtol=0)

    theta1 = load_file(str(TRL_DIR / "grpo" / "iterated" / f"{name}-theta1.safetensors"))
    params = {n.replace(".default", ""): p for n, p in model.named_parameters() if p.requires_grad}
    assert set(params) == set(theta1)
    with torch.no_grad():
        for key, value in theta1.items():
            params[key].copy_(value)
    again = objective.rollout(module, [], acc, 1)
    assert again is first
    totals = accumulate_gradients(module, again, acc, objective)
    assert totals.loss == pytest.approx(case["loss"], abs=TOL)
    _check_grads(model, TRL_DIR / "grpo" / "iterated" / f"{name}-grads.safetensors", name)
    values = objective.report(totals.sums | {k: 0.0 for k in objective.stat_names}, totals.counts, evaluation=True)
    assert values["clip_ratio/region_mean"] > 0  # the update moved the ratios out of the clip range somewhere
    for metric in ["clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"] + \
            (["kl"] if case["config"]["beta"] else []):
        assert values[metric] == pytest.approx(case["metrics"][metric], abs=1e-5), metric
