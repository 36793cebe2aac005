"""GRPO learns a format: SmolLM2-135M-Instruct + LoRA, a rule-based reward, held-out prompts.

    .venv/bin/python bench/grpo_learning.py                      # the README's figures (30 steps)
    .venv/bin/python bench/grpo_learning.py --steps 10 --out DIR # tests/e2e/test_grpo_learns.py's shorter run

The task (examples/grpo.yml, examples/grpo_rewards.py, examples/data/grpo_prompts.jsonl): the
prompts ask for one short sentence about a topic; the reward `grpo_rewards.brief_and_on_topic` is
1.0 for an answer of at most 10 words that names the topic (the row's `topic` column), else 0.0.
SmolLM2-135M-Instruct does both only now and then (its sentences run on past 20 words), so groups
have some signal and much to learn. (A reward for brevity alone was learned within 6 steps as
two-word non-answers: "Jehovah." for thunder.)

Held-out: prompts on topics the training prompts never name (examples/data/grpo_heldout.jsonl),
`--samples` completions each, sampled as training samples (temperature 1.0, top_p 1.0, at most
max_completion_length tokens, seeded), from the base model and from the trained adapter; the mean
reward of each is reported. Runs in tuner's venv only (no peer): `tuner train` in a subprocess,
then transformers + peft for the held-out sampling. fp32 (the config's `bf16: auto`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "grpo.yml"


def load_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def reward_function():
    spec = importlib.util.spec_from_file_location("grpo_rewards", REPO / "examples" / "grpo_rewards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.brief_and_on_topic


def heldout_reward(base_dir: str, adapter_dir: str | None, rows: list[dict], samples: int, max_new_tokens: int,
                   seed: int) -> tuple[float, list[str]]:
    """The mean reward over `samples` sampled completions of each held-out prompt."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(adapter_dir or base_dir)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if adapter_dir:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    texts = [tokenizer.apply_chat_template(r["messages"], tokenize=False, add_generation_prompt=True) for r in rows]
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(**enc, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                             max_new_tokens=max_new_tokens, num_return_sequences=samples,
                             pad_token_id=tokenizer.pad_token_id)
    completions = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    prompts = [r["messages"] for r in rows for _ in range(samples)]
    topics = [r["topic"] for r in rows for _ in range(samples)]
    rewards = reward_function()(prompts=prompts, completions=[[{"role": "assistant", "content": c}]
                                                              for c in completions], topic=topics)
    return sum(rewards) / len(rewards), completions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--samples", type=int, default=8, help="completions per held-out prompt")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="/tmp/tuner-bench/grpo-learning")
    ap.add_argument("--results", default=str(REPO / "bench" / "results" / "grpo_learning.json"),
                    help="where the figures go ('' for nowhere)")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")

    started = time.perf_counter()
    cmd = [sys.executable, "-m", "tuner", "train", str(EXAMPLE), "--max_steps", str(a.steps),
           "--output_dir", str(out / "run"), "--dataset_prepared_path", str(out / "prepared"), "--seed", str(a.seed)]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env, cwd=REPO)
    train_seconds = time.perf_counter() - started
    run = json.loads((out / "run" / "tuner_run.json").read_text())
    steps = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rewards = [s["reward"] for s in steps if "reward" in s]

    heldout = load_rows(REPO / "examples" / "data" / "grpo_heldout.jsonl")
    import yaml

    max_new = int(yaml.safe_load(EXAMPLE.read_text())["trl"]["max_completion_length"])
    base, base_texts = heldout_reward(run["base_model_path"], None, heldout, a.samples, max_new, a.seed)
    trained, trained_texts = heldout_reward(run["base_model_path"], str(out / "run"), heldout, a.samples, max_new,
                                            a.seed)
    result = {
        "steps": a.steps, "heldout_prompts": len(heldout), "samples_per_prompt": a.samples,
        "heldout_mean_reward": {"base": base, "trained": trained},
        "train_reward_first_5_steps": sum(train_rewards[:5]) / max(1, len(train_rewards[:5])),
        "train_reward_last_5_steps": sum(train_rewards[-5:]) / max(1, len(train_rewards[-5:])),
        "train_rewards": train_rewards, "train_wall_seconds": round(train_seconds, 1),
        "examples": {"base": base_texts[:: a.samples][:4], "trained": trained_texts[:: a.samples][:4]},
        "when": time.strftime("%Y-%m-%d %H:%M:%S"), "load": os.getloadavg(),
    }
    (out / "grpo_learning.json").write_text(json.dumps(result, indent=1) + "\n")
    text = (f"GRPO, SmolLM2-135M-Instruct + LoRA, {a.steps} steps (examples/grpo.yml), fp32:\n"
            f"held-out mean reward ({len(heldout)} prompts x {a.samples} samples): base {base:.3f}, "
            f"trained {trained:.3f}\n"
            f"training reward, first 5 steps {result['train_reward_first_5_steps']:.3f}, "
            f"last 5 {result['train_reward_last_5_steps']:.3f}; training took {train_seconds:.0f} s wall")
    print(text)
    if a.results:
        Path(a.results).write_text(json.dumps(result, indent=1) + "\n")
        Path(a.results).with_suffix(".txt").write_text(
            "$ .venv/bin/python bench/grpo_learning.py " + " ".join(sys.argv[1:]) + "\n\n" + text + "\n")


if __name__ == "__main__":
    main()
