"""Worker (bench venv): train SmolLM2 + LoRA with TRL's DPOTrainer and report per-step statistics.

    python bench/_run_trl_dpo.py --model-dir DIR --data pairs.jsonl --steps N --out result.json

`--data` holds either TRL's plain-text preference rows ({"prompt": str, "chosen": str,
"rejected": str}: bench/preference_throughput.py writes the pairs tuner prepared, decoded, in
the order tuner trains them, so that TRL's sequential sampler gives every step the same pairs
on the same tokens) or Axolotl `chat_template.default` rows ({"messages": [...], "chosen":
{...}, "rejected": {...}}), handed to TRL as conversational rows (prompt = messages,
chosen/rejected = [message]).

Settings: `--precision` bf16 (the default: bf16 base weights, bf16 autocast) or fp32 (fp32
weights, no autocast), LoRA r16/alpha32/dropout 0 on "all-linear" (fp32 adapter weights), reference = the adapter disabled (TRL's
PEFT path, no second model), `--batch` pairs per step (one forward of 2 x batch sequences,
right-padded), train_sampling_strategy="sequential" (the file's order), fused torch AdamW,
2 threads, no gradient checkpointing (TRL's default turns it on; tuner's is off), max_length 1024.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--batch", type=int, default=8, help="pairs per step")
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--warmup-steps", type=int, default=2)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="bf16",
                    help="bf16: bf16 base weights and bf16 autocast; fp32: fp32 weights, no autocast")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(2)

    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines() if line.strip()]
    pairs = [{"prompt": r["messages"], "chosen": [r["chosen"]], "rejected": [r["rejected"]]} if "messages" in r
             else {k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows]
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    base_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.precision]
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=base_dtype, attn_implementation="sdpa")
    model.config.use_cache = False
    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", bias="none",
                             task_type="CAUSAL_LM")
    config = DPOConfig(
        output_dir=str(Path(args.workdir) / "trl-dpo-out"),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1,
        learning_rate=args.lr,
        lr_scheduler_type="cosine",
        warmup_steps=args.warmup_steps,
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch_fused",
        beta=args.beta,
        loss_type=["sigmoid"],
        bf16=args.precision == "bf16",
        use_cpu=True,
        gradient_checkpointing=False,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=args.seed,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        max_length=1024,
        train_sampling_strategy="sequential",
    )

    timeline: dict = {"step_end": []}

    class Timer(TrainerCallback):
        def on_train_begin(self, args_, state, control, **kw):
            timeline["train_begin"] = time.time()
            timeline["train_begin_pc"] = time.perf_counter()

        def on_step_end(self, args_, state, control, **kw):
            timeline["step_end"].append((time.time(), time.perf_counter()))

    t_init = time.perf_counter()
    trainer = DPOTrainer(model=model, args=config, train_dataset=Dataset.from_list(pairs), processing_class=tokenizer,
                         peft_config=peft_config, callbacks=[Timer()])
    init_seconds = time.perf_counter() - t_init

    collator = trainer.data_collator
    seen: list[dict] = []

    def recording_collator(examples):
        batch = collator(examples)
        seen.append({
            "pairs": len(examples),
            "real": int(batch["attention_mask"].sum()),
            "slots": int(batch["input_ids"].numel()),
            "completion_tokens": int(batch["completion_mask"].sum()),
        })
        return batch

    trainer.data_collator = recording_collator
    trainer.train()

    ends = timeline["step_end"]
    starts = [timeline["train_begin_pc"]] + [pc for _, pc in ends[:-1]]
    history = [h for h in trainer.state.log_history if "loss" in h]
    steps = []
    for i, ((wall, pc), start) in enumerate(zip(ends, starts)):
        stat = dict(seen[i]) if i < len(seen) else {}
        h = history[i] if i < len(history) else {}
        stat.update({"step": i + 1, "time": wall, "duration": pc - start, "loss": h.get("loss"),
                     "rewards/accuracies": h.get("rewards/accuracies"), "rewards/margins": h.get("rewards/margins")})
        steps.append(stat)
    result = {
        "contender": "trl_dpo",
        "trl_version": trl.__version__,
        "train_begin": timeline["train_begin"],
        "train_end": ends[-1][0],
        "init_seconds": init_seconds,
        "steps": steps,
        "trainable": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "mixed_precision": str(trainer.accelerator.mixed_precision),
        "threads": torch.get_num_threads(),
        "prepared_pairs": trainer.train_dataset.num_rows,
    }
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
