"""rl: grpo with two gloo processes on a tiny random Llama equals one process with the same global
batch: each process generates for its own prompts (whole groups: a prompt's num_generations
completions never leave its process), advantages are computed over all processes' rewards (the
group means; with scale_rewards: batch, the std of the whole step), and the loss is normalised
over the whole step on all processes. Completions are fixed by prompt and generation index
(tests/e2e/grpo_fixed_completions.py), so both runs train on the same completions; plain SGD, so
the weights show the gradients' agreement."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import load_weights, make_tiny_model, read_metrics, write_config, write_jsonl

SCRIPT = str(Path(__file__).with_name("grpo_fixed_completions.py"))
REWARDS = '''
def length(prompts, completions, **kwargs):
    return [len(c) / 20 for c in completions]

def digit(prompts, completions, n, **kwargs):
    return [float(str(k) in c) for c, k in zip(completions, n)]
'''
METRICS = ("loss", "reward", "reward_std", "rewards/length/mean", "rewards/digit/std", "advantages/std",
           "frac_reward_zero_std", "kl", "completions/mean_length", "completions/max_length",
           "completions/clipped_ratio", "completion_tokens", "clip_ratio/region_mean")


@pytest.fixture(scope="module")
def base(tmp_path_factory, smol_tokenizer_dir):
    return make_tiny_model(tmp_path_factory.mktemp("tiny-grpo-2p") / "base", "llama", smol_tokenizer_dir)


ROWS = [{"prompt": "Say a number" + " please" * (i % 3) + f": {i}", "n": i} for i in range(8)]


def config(tmp_path: Path, base: Path, name: str, accumulation: int, loss_type: str, scale: str,
           iterations: int = 1) -> Path:
    (tmp_path / "my_rewards.py").write_text(REWARDS)
    data = write_jsonl(tmp_path / "prompts.jsonl", ROWS)
    return write_config(
        tmp_path / f"{name}.yml", base_model=str(base), rl="grpo", datasets=[{"path": str(data)}],
        dataset_prepared_path=str(tmp_path / f"prepared-{name}"), output_dir=str(tmp_path / name), sequence_len=64,
        shuffle_merged_datasets=False, micro_batch_size=4, gradient_accumulation_steps=accumulation, max_steps=2, optimizer="sgd",
        learning_rate=0.5, lr_scheduler="constant", bf16=False, seed=11, logging_steps=1,
        adapter="lora", lora_r=4, lora_alpha=8, lora_target_linear=True,
        trl={"num_generations": 4, "max_completion_length": 8, "beta": 0.04, "loss_type": loss_type,
             "scale_rewards": scale, "reward_funcs": ["my_rewards.length", "my_rewards.digit"],
             "num_iterations": iterations})


@pytest.mark.parametrize("loss_type, scale, iterations", [
    ("dapo", "batch", 1),  # token-normalised; the std of all processes' rewards
    pytest.param("bnpo", "group", 1, marks=pytest.mark.slow),  # per-micro-batch means, over all processes' micro-batches
    # num_iterations 2: the two steps train on one rollout, each process its own, against its old log-probs
    pytest.param("grpo", "group", 2, marks=pytest.mark.slow),
])
def test_two_processes_equal_one(tmp_path, base, loss_type, scale, iterations):
    # the one completion cut at max_completion_length: in a prompt process 1 gets at step 1 (rows in file order,
    # shuffle_merged_datasets: false; 4 prompts a step, 2 for each process), so the step's longest completion is
    # not on process 0
    cut = ROWS[2]["prompt"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUT_PROMPT": cut}
    one = subprocess.run([sys.executable, SCRIPT, "train", str(config(tmp_path, base, "one", 4, loss_type, scale, iterations))],
                         capture_output=True, text=True, env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", SCRIPT,
                          "train", str(config(tmp_path, base, "two", 2, loss_type, scale, iterations))],
                         capture_output=True, text=True, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    logged = lambda name: [m for m in read_metrics(tmp_path / name) if "loss" in m]
    ones, twos = logged("one"), logged("two")
    assert len(ones) == len(twos) == 2
    assert ones[0]["frac_reward_zero_std"] < 1 and ones[1]["kl"] > 0
    assert ones[0]["completions/clipped_ratio"] == 1 / 16 and ones[0]["completions/max_length"] == 8
    if iterations == 2:  # one rollout, trained twice: the second update's ratios are not 1
        assert ones[1]["reward"] == ones[0]["reward"] and ones[1]["clip_ratio/region_mean"] > 0
    for a, b in zip(ones, twos):
        for key in METRICS:
            assert b[key] == pytest.approx(a[key], abs=1e-5), key
    a = load_weights(tmp_path / "one" / "adapter_model.safetensors")
    b = load_weights(tmp_path / "two" / "adapter_model.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    assert max(float(a[k].abs().max()) for k in a if "lora_B" in k) > 1e-3  # the steps moved the adapter
