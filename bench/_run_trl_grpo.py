"""Worker (bench venv): GRPO with TRL 1.16's GRPOTrainer on bench/grpo_throughput.py's settings.

    python bench/_run_trl_grpo.py --model-dir DIR --prompts prompts.jsonl --steps N --out result.json

The prompts are conversational rows ({"messages": [...]}, handed to TRL as `prompt`), the reward
is examples/grpo_rewards.brief_and_on_topic (the same function tuner's side names), LoRA r16/alpha32/dropout 0
on "all-linear", fp32 (this CPU has no fast bf16), transformers' generate (no vLLM), beta 0 (no
reference), loss_type dapo, `--batch` completions per micro-batch x `--accumulation` micro-batches
per step (one generation batch per step, TRL's steps_per_generation default), no gradient
checkpointing (TRL's default turns it on; tuner's is off), 2 threads. Per step: the time from one
on_step_end to the next (generation included, as tuner's train_seconds), and the step's prompt and
completion tokens from TRL's own logged metrics.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--accumulation", type=int, default=2)
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--max-completion-length", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(2)

    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    spec = importlib.util.spec_from_file_location("grpo_rewards", REPO / "examples" / "grpo_rewards.py")
    rewards = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rewards)
    rows = [json.loads(line) for line in Path(a.prompts).read_text().splitlines() if line.strip()]
    data = Dataset.from_list([{"prompt": r["messages"], "topic": r["topic"]} for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(a.model_dir)
    model = AutoModelForCausalLM.from_pretrained(a.model_dir, dtype=torch.float32, attn_implementation="sdpa")
    config = GRPOConfig(
        output_dir=str(Path(a.workdir) / "trl-grpo-out"), max_steps=a.steps, per_device_train_batch_size=a.batch,
        gradient_accumulation_steps=a.accumulation, num_generations=a.generations,
        max_completion_length=a.max_completion_length, temperature=1.0, top_p=1.0, beta=0.0, loss_type="dapo",
        learning_rate=a.lr, lr_scheduler_type="constant", optim="adamw_torch", weight_decay=0.0, max_grad_norm=1.0,
        bf16=False, use_cpu=True, gradient_checkpointing=False, logging_steps=1, save_strategy="no", report_to="none",
        disable_tqdm=True, seed=a.seed, dataloader_num_workers=0, dataloader_pin_memory=False)
    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", bias="none",
                             task_type="CAUSAL_LM")
    ends: list[tuple[float, float]] = []
    begin: dict[str, float] = {}

    class Timer(TrainerCallback):
        def on_train_begin(self, args_, state, control, **kw):
            begin.update(wall=time.time(), pc=time.perf_counter())

        def on_step_end(self, args_, state, control, **kw):
            ends.append((time.time(), time.perf_counter()))

    trainer = GRPOTrainer(model=model, reward_funcs=[rewards.brief_and_on_topic], args=config, train_dataset=data,
                          processing_class=tokenizer, peft_config=peft_config, callbacks=[Timer()])
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    starts = [begin["pc"]] + [pc for _, pc in ends[:-1]]
    steps = []
    completions = a.batch * a.accumulation
    for i, ((_, pc), start) in enumerate(zip(ends, starts)):
        h = logs[i] if i < len(logs) else {}
        mean_len = h.get("completions/mean_length")
        steps.append({"step": i + 1, "duration": pc - start, "reward": h.get("reward"),
                      "completion_tokens": mean_len * completions if mean_len is not None else None,
                      "num_tokens": h.get("num_tokens")})
    Path(a.out).write_text(json.dumps({"contender": "trl_grpo", "trl_version": trl.__version__,
                                       "train_begin": begin["wall"], "train_end": ends[-1][0], "steps": steps}))


if __name__ == "__main__":
    main()
