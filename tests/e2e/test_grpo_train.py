"""rl: grpo end to end on a tiny random Llama (seconds per run): the rollout's mechanics, what is
logged, samples.jsonl, and exact resume after a SIGKILL (sampling is seeded by seed and step)."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
from helpers import (
    load_weights,
    make_config,
    make_tiny_model,
    read_metrics,
    tuner_cmd,
    wait_for_step,
    write_config,
    write_jsonl,
)

REWARDS = '''
def length(prompts, completions, **kwargs):
    return [len(c[0]["content"] if isinstance(c, list) else c) / 50 for c in completions]

def mentions(prompts, completions, answer, **kwargs):
    return [float(a in (c[0]["content"] if isinstance(c, list) else c)) for c, a in zip(completions, answer)]

calls = []

def record(prompts, completions, completion_ids, answer, **kwargs):
    calls.append({"prompts": prompts, "completions": completions, "ids": completion_ids, "answer": answer})
    return [0.0] * len(completions)
'''
PROMPTS = [{"messages": [{"role": "user", "content": f"Say the number {i}."}], "answer": str(i)} for i in range(6)] + \
          [{"prompt": f"Count to {i}:", "answer": str(i)} for i in range(6)]


@pytest.fixture(scope="module")
def base(tmp_path_factory, smol_tokenizer_dir):
    return make_tiny_model(tmp_path_factory.mktemp("tiny-grpo") / "base", "llama", smol_tokenizer_dir)


def values(tmp_path: Path, base: Path, name: str = "out", **extra) -> dict:
    (tmp_path / "my_rewards.py").write_text(REWARDS)
    data = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    out = dict(
        base_model=str(base), rl="grpo", datasets=[{"path": str(data), "type": "chat_template"}],
        dataset_prepared_path=str(tmp_path / "prepared"), output_dir=str(tmp_path / name),
        sequence_len=128, micro_batch_size=4, gradient_accumulation_steps=2, max_steps=3, learning_rate=5e-3,
        lr_scheduler="constant", optimizer="adamw_torch", bf16=False, seed=3, logging_steps=1,
        adapter="lora", lora_r=4, lora_alpha=8, lora_target_linear=True,
        trl={"num_generations": 4, "max_completion_length": 8, "beta": 0.04, "loss_type": "dapo",
             "reward_funcs": ["my_rewards.length", "my_rewards.mentions"], "reward_weights": [1.0, 2.0]},
    )
    out.update(extra)
    return out


def test_rollout_mechanics_metrics_and_samples(tmp_path, base):
    from tuner.train.loop import train

    result = train(make_config(tmp_path, **values(tmp_path, base)))
    steps = [m for m in read_metrics(tmp_path / "out") if "loss" in m]
    assert [m["step"] for m in steps] == [1, 2, 3]
    for m in steps:
        for key in ("reward", "reward_std", "rewards/length/mean", "rewards/length/std", "rewards/mentions/mean",
                    "kl", "clip_ratio/region_mean", "frac_reward_zero_std", "completions/mean_length",
                    "completions/max_length", "completions/clipped_ratio", "generation_seconds", "advantages/std"):
            assert key in m, key
        assert 0 < m["completions/mean_length"] <= m["completions/max_length"] <= 8
        assert m["clip_ratio/region_mean"] == 0  # one update per generation batch: the ratio is 1
        assert m["kl"] >= 0 and m["grad_norm"] > 0  # the rewards reach the loss
        assert 0 < m["generation_seconds"] < m["train_seconds"]
    assert steps[0]["kl"] == pytest.approx(0, abs=1e-7)  # the first step's policy is the reference
    assert steps[-1]["kl"] > 0
    # 2 prompts x 4 completions per step (4 x 2 / 4 prompts); one token count per completion token
    assert steps[0]["completion_tokens"] == pytest.approx(8 * steps[0]["completions/mean_length"])
    samples = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == {1, 2, 3}
    for s in samples:
        assert set(s["rewards"]) == {"length", "mentions"}
        assert s["reward"] == pytest.approx(s["rewards"]["length"] + 2 * s["rewards"]["mentions"], abs=1e-6)
    assert (tmp_path / "out" / "adapter_model.safetensors").exists() and result.steps == 3


def test_reward_functions_get_trl_arguments(tmp_path, base):
    """Message prompts as messages, completions as one assistant message, the other columns as keywords,
    one group of num_generations completions per prompt; completion_ids stop at (and keep) EOS."""
    import sys

    from transformers import AutoTokenizer

    from tuner.train.loop import train

    cfg = make_config(tmp_path, **values(tmp_path, base, max_steps=1, trl={
        "num_generations": 4, "max_completion_length": 6, "reward_funcs": ["my_rewards.record"]}))
    train(cfg)
    calls = sys.modules["my_rewards"].calls
    assert len(calls) == 1
    call = calls[0]
    assert len(call["prompts"]) == len(call["completions"]) == len(call["ids"]) == len(call["answer"]) == 8
    for g in range(2):
        group = call["prompts"][4 * g : 4 * g + 4]
        assert all(p == group[0] for p in group) and len({a for a in call["answer"][4 * g : 4 * g + 4]}) == 1
    eos = AutoTokenizer.from_pretrained(base).eos_token_id
    for prompt, completion, ids, answer in zip(call["prompts"], call["completions"], call["ids"], call["answer"]):
        row = next(r for r in PROMPTS if r["answer"] == answer and (r.get("messages") == prompt or r.get("prompt") == prompt))
        assert isinstance(completion, list) == isinstance(prompt, list)
        if isinstance(completion, list):
            assert completion[0]["role"] == "assistant" and isinstance(completion[0]["content"], str)
        assert 1 <= len(ids) <= 6 and (eos not in ids or ids.index(eos) == len(ids) - 1)
        assert row is not None


def test_sigkill_then_resume_is_exact(tmp_path, base):
    ref = write_config(tmp_path / "ref.yml", **values(tmp_path, base, "ref", max_steps=5, save_steps=2))
    done = subprocess.run(tuner_cmd("train", str(ref)), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    cfg = write_config(tmp_path / "killed.yml", **values(tmp_path, base, "killed", max_steps=5, save_steps=2))
    proc = subprocess.Popen(tuner_cmd("train", str(cfg)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    reached = wait_for_step(proc, tmp_path / "killed", 3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert reached < 5
    resumed = subprocess.run(tuner_cmd("train", str(cfg), "--resume_from_checkpoint", "auto"), capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr
    a = load_weights(tmp_path / "killed" / "adapter_model.safetensors")
    b = load_weights(tmp_path / "ref" / "adapter_model.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
    for key in ("loss", "reward", "kl"):
        logged = lambda out: {m["step"]: m[key] for m in read_metrics(out) if "loss" in m}
        killed, ref = logged(tmp_path / "killed"), logged(tmp_path / "ref")
        assert sorted(killed) == sorted(ref) == [1, 2, 3, 4, 5]
        assert [killed[s] for s in ref] == pytest.approx([ref[s] for s in ref], abs=1e-6), key
    samples = lambda out: [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert samples(tmp_path / "killed") == samples(tmp_path / "ref")  # the same completions, each step once


def test_num_iterations_trains_each_rollout_twice_and_resumes_inside_one(tmp_path, base):
    """num_iterations 2: steps 1 and 2 train on one rollout (same rewards and lengths, sampled once: no
    generation time, one set of samples), the second against the first's log-probs, so its ratios
    leave 1. A run SIGKILLed after step 4 and resumed from the checkpoint of step 3 (inside a rollout's
    two steps: the kept batch comes from the checkpoint) ends with the uninterrupted run's weights."""
    extra = dict(max_steps=6, save_steps=1, learning_rate=2e-2,
                 trl={**values(tmp_path, base)["trl"], "num_iterations": 2})
    ref = write_config(tmp_path / "ref.yml", **values(tmp_path, base, "ref", **extra))
    done = subprocess.run(tuner_cmd("train", str(ref)), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    steps = {m["step"]: m for m in read_metrics(tmp_path / "ref") if "loss" in m}
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]
    for first in (1, 3, 5):
        a, b = steps[first], steps[first + 1]
        for key in ("reward", "rewards/length/mean", "completions/mean_length", "advantages/std"):
            assert a[key] == pytest.approx(b[key], abs=1e-9), key
        assert a["generation_seconds"] > 0 and b["generation_seconds"] == 0
        assert a["clip_ratio/region_mean"] == 0  # the first update of a rollout: ratio 1
    assert max(steps[s]["clip_ratio/region_mean"] for s in (2, 4, 6)) > 0  # the second: clipped somewhere
    assert steps[1]["reward"] != steps[3]["reward"] or steps[1]["completions/mean_length"] != steps[3]["completions/mean_length"]
    samples = [json.loads(x) for x in (tmp_path / "ref" / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == {1, 3, 5}

    cfg = write_config(tmp_path / "killed.yml", **values(tmp_path, base, "killed", **extra))
    proc = subprocess.Popen(tuner_cmd("train", str(cfg)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_step(proc, tmp_path / "killed", 4)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step3 = tmp_path / "killed" / "checkpoints" / "step-000003"
    assert (step3 / "objective-0.safetensors").is_file()
    resumed = subprocess.run(tuner_cmd("train", str(cfg), "--resume_from_checkpoint", str(step3)),
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    a = load_weights(tmp_path / "killed" / "adapter_model.safetensors")
    b = load_weights(tmp_path / "ref" / "adapter_model.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
    killed = {m["step"]: m["loss"] for m in read_metrics(tmp_path / "killed") if "loss" in m}
    assert [killed[s] for s in range(1, 7)] == pytest.approx([steps[s]["loss"] for s in range(1, 7)], abs=1e-6)
    samples_of = lambda out: [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert samples_of(tmp_path / "killed") == samples_of(tmp_path / "ref")

    (step3 / "objective-0.safetensors").unlink()  # a checkpoint inside a rollout without its batch
    refused = subprocess.run(tuner_cmd("train", str(cfg), "--resume_from_checkpoint", str(step3)),
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "does not hold the batch sampled at step 3" in refused.stderr


@pytest.mark.parametrize("body, message", [
    ("def length(prompts, completions, **kw):\n    raise ValueError('boom')\n",
     "reward function my_rewards.length raised ValueError: boom"),
    ("def lenght(prompts, completions, **kw):\n    return []\n", "has no function 'length'. Did you mean 'lenght'?"),
])
def test_bad_reward_functions_are_user_errors(tmp_path, base, body, message):
    cfg = write_config(tmp_path / "cfg.yml", **values(tmp_path, base, max_steps=1,
                                                       trl={"num_generations": 4, "max_completion_length": 4,
                                                            "reward_funcs": ["my_rewards.length"]}))
    (tmp_path / "my_rewards.py").write_text(body)
    run = subprocess.run(tuner_cmd("train", str(cfg)), capture_output=True, text=True)
    assert run.returncode == 2, run.stderr
    assert message in run.stderr and "Traceback" not in run.stderr
