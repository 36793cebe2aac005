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


@pytest.mark.parametrize("accumulation", [1, 2])
@pytest.mark.parametrize("name", list(FIXTURE["cases"]))
def test_grpo_matches_trl(tmp_path, tiny_dir, name, accumulation):
    from accelerate import Accelerator
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuner.data.formats import EncodeContext
    from tuner.data.formats.prompts import Prompts
    from tuner.train.objectives.grpo import (
        GRPO,
        _completion_mask,
        _left_padded,
        _micro_batch,
    )
    from tuner.train.rewards import score
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
    rows = [r for r in FIXTURE["rows"] for _ in range(g)]
    texts = tok.batch_decode(FIXTURE["completion_ids"], skip_special_tokens=True)
    per_func = torch.tensor(score(objective.funcs, [r["prompt"] for r in rows],
                                  [[{"role": "assistant", "content": t}] for t in texts], FIXTURE["completion_ids"],
                                  {"answer": [r["answer"] for r in rows]}), dtype=torch.float32).T
    rewards, advantages, zero_std = objective._advantages(per_func, acc)
    torch.testing.assert_close(advantages, torch.tensor(case["advantages"]), atol=1e-5, rtol=0)

    base = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, TRL_DIR / "grpo" / "adapter", is_trainable=True)
    module = objective.wrap(model).train()
    prompt_ids, prompt_mask = _left_padded(case["prompt_ids"], tok.pad_token_id)
    width = max(len(c) for c in FIXTURE["completion_ids"])
    completion_ids = torch.tensor([c + [tok.pad_token_id] * (width - len(c)) for c in FIXTURE["completion_ids"]])
    completion_mask, truncated = _completion_mask(completion_ids, [tok.eos_token_id])
    ids = torch.cat([prompt_ids, completion_ids], 1)
    mask = torch.cat([prompt_mask, completion_mask], 1)
    size = len(rows) // accumulation
    batches = [_micro_batch(ids[i : i + size], mask[i : i + size], prompt_ids.shape[1], completion_mask[i : i + size],
                            advantages[i : i + size]) for i in range(0, len(rows), size)]
    totals = accumulate_gradients(module, batches, acc, objective)

    assert totals.loss == pytest.approx(case["loss"], abs=TOL)
    want = load_file(str(TRL_DIR / "grpo" / "grads" / f"{name}.safetensors"))
    got = {n.replace(".default", ""): p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(got) == set(want)
    for key, grad in want.items():
        torch.testing.assert_close(got[key], grad, atol=TOL, rtol=0, msg=lambda m: f"{name}: {key}\n{m}")
    # the metrics TRL logged for the step (its `kl` is a token mean over the step, as tuner's)
    stats = objective._stats(per_func, rewards, advantages, zero_std, completion_mask.sum(-1), truncated)
    values = objective.report({**totals.sums, **{k: float(v) for k, v in stats.items()}}, totals.counts, evaluation=True)
    names = ["reward", "reward_std", "frac_reward_zero_std", "completions/mean_length", "completions/clipped_ratio",
             "clip_ratio/region_mean", "rewards/length_reward/mean", "rewards/length_reward/std",
             "rewards/answer_reward/mean", "rewards/answer_reward/std"] + (["kl"] if case["config"]["beta"] else [])
    for metric in names:
        assert values[metric] == pytest.approx(case["metrics"][metric], abs=1e-5), metric
