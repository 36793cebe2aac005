"""rl: grpo learns on the real SmolLM2 with LoRA (slow: `make test-slow`): examples/grpo.yml's task
(answer in at most 10 words and name the topic: examples/grpo_rewards.brief_and_on_topic) on a shorter run than the
README's; the held-out mean reward (prompts on topics training never names, sampled as training
samples) of the trained adapter clearly beats the base model's. bench/grpo_learning.py does the
run and the held-out sampling; the README's figures are its default (longer) run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.smollm2
def test_heldout_reward_rises(tmp_path, smol_model_dir):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    subprocess.run([sys.executable, str(REPO / "bench" / "grpo_learning.py"), "--steps", "8", "--samples", "4",
                    "--out", str(tmp_path), "--results", ""], check=True, env=env, cwd=REPO)
    result = json.loads((tmp_path / "grpo_learning.json").read_text())
    base, trained = result["heldout_mean_reward"]["base"], result["heldout_mean_reward"]["trained"]
    print(f"held-out mean reward: base {base:.3f}, trained {trained:.3f}")
    assert trained > base + 0.25, result
