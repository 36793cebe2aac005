"""The tuner quickstart: fine-tune SmolLM2-135M-Instruct with LoRA, then show it learned.

Run from the repository root (this is what `make quickstart` does):

    python examples/quickstart.py              # train, then score
    python examples/quickstart.py --no-train   # score the model trained last time again

Three phases:
  1. train:  `tuner train examples/quickstart.yml`, on the date-normalization rows in
             examples/data/quickstart_train.csv ("Mar 5th 2021" -> "2021-03-05").
  2. score:  the base model and the fine-tuned one answer the same held-out prompts
             (examples/data/quickstart_heldout.csv: dates never seen in training), with
             greedy decoding and one scorer. The base model is asked through its own chat
             template, the fine-tuned model through the Alpaca prompt it was trained on.
  3. report: print a table and write outputs/quickstart/score.json.

Exits non-zero if the fine-tuned model does not beat the base model by MIN_GAP points.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import yaml  # noqa: E402
from peft import PeftModel  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from tuner.data.formats.alpaca import prompt as alpaca_prompt  # noqa: E402  (the training format)
from tuner.train.precision import cpu_has_fast_bf16  # noqa: E402

CONFIG = Path("examples/quickstart.yml")
HELDOUT = Path("examples/data/quickstart_heldout.csv")
MIN_GAP = 30.0  # percentage points the fine-tuned model must gain over the base model
MAX_NEW_TOKENS = 16  # "YYYY-MM-DD" is 10 digits and 2 dashes: 12 tokens, plus an end token
BATCH_SIZE = 50


# --------------------------------------------------------------------------- scoring


def first_line(text: str) -> str:
    """The scorer's reading of an answer: first non-empty line, trimmed, without a final period."""
    for line in text.splitlines():
        if line.strip():
            return line.strip().rstrip(".").strip()
    return ""


def user_message(row: dict) -> str:
    """The instruction and the input, as the base model's chat user turn."""
    return f"{row['instruction']}\n\n{row['input']}" if row.get("input") else row["instruction"]


@torch.inference_mode()
def generate(model, tokenizer, prompts: list[str]) -> list[str]:
    """Greedy completions of `prompts`, in batches, left-padded so every prompt ends at the same position."""
    tokenizer.padding_side = "left"
    completions = []
    for i in range(0, len(prompts), BATCH_SIZE):
        batch = tokenizer(prompts[i : i + BATCH_SIZE], return_tensors="pt", padding=True, add_special_tokens=False)
        out = model.generate(
            **batch,
            max_new_tokens=MAX_NEW_TOKENS,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        new_tokens = out[:, batch["input_ids"].shape[1] :]
        completions += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return completions


def score(model, tokenizer, prompts: list[str], rows: list[dict]) -> tuple[float, list[dict]]:
    """Percentage of rows whose answer (first line of the completion) equals the expected output."""
    completions = generate(model, tokenizer, prompts)
    results = []
    for row, completion in zip(rows, completions):
        answer = first_line(completion)
        results.append({
            "input": row["input"], "expected": row["output"], "completion": completion,
            "answer": answer, "correct": answer == row["output"].strip(),
        })
    return 100.0 * sum(r["correct"] for r in results) / len(results), results


def load_model(base_path: str, adapter: Path | None = None):
    """The base model, with the LoRA adapter folded into its weights when one is given.

    Merged in fp32, then cast to bf16 where the CPU runs bf16 fast (as `bf16: auto` does in
    training): generation is then several times faster than in fp32.
    """
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    dtype = torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    return model.to(dtype).eval()


def chat_prompts(tokenizer, rows: list[dict]) -> list[str]:
    """The base model's own format: its chat template around the same instruction and input."""
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": user_message(r)}], tokenize=False, add_generation_prompt=True
        )
        for r in rows
    ]


def show_examples(name: str, results: list[dict], n: int = 5) -> None:
    print(f"\n{name}: first {n} held-out prompts")
    for r in results[:n]:
        mark = "ok " if r["correct"] else "BAD"
        print(f"  {mark} {r['input']!r:34} expected {r['expected']}  got {r['completion'].strip()[:40]!r}")


# --------------------------------------------------------------------------- the phases


def main() -> int:
    started = time.perf_counter()
    hf_logging.disable_progress_bar()
    config = yaml.safe_load(CONFIG.read_text())
    output_dir = Path(config["output_dir"])
    with HELDOUT.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))

    # 1. Train with tuner, exactly as a user would from the command line.
    t0 = time.perf_counter()
    if "--no-train" not in sys.argv:
        print(f"== 1. train: tuner train {CONFIG}", flush=True)
        # --overwrite_output_dir: `make quickstart` run twice retrains instead of refusing
        # to overwrite the finished run of the first time.
        trained = subprocess.run(
            [sys.executable, "-m", "tuner", "train", str(CONFIG), "--overwrite_output_dir", "true"]
        )
        if trained.returncode != 0:
            print(f"quickstart: tuner train failed (exit code {trained.returncode})", file=sys.stderr)
            return trained.returncode
    train_seconds = time.perf_counter() - t0

    # 2. Score the base model and the fine-tuned one on the same held-out rows, with the same
    #    tokenizer and scorer. The adapter records which base folder it was trained on
    #    (the HF folder tuner converted the GGUF into).
    print(f"\n== 2. score {len(rows)} held-out prompts (greedy, exact match of the first line)", flush=True)
    base_path = json.loads((output_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token

    t0 = time.perf_counter()
    base_score, base_results = score(load_model(base_path), tokenizer, chat_prompts(tokenizer, rows), rows)
    base_seconds = time.perf_counter() - t0
    show_examples("base model, asked through its chat template", base_results)

    t0 = time.perf_counter()
    tuned = load_model(base_path, adapter=output_dir)
    tuned_score, tuned_results = score(tuned, tokenizer, [alpaca_prompt(r) for r in rows], rows)
    tuned_seconds = time.perf_counter() - t0
    show_examples("fine-tuned model, asked through the Alpaca prompt it was trained on", tuned_results)

    # 3. Report.
    gap = tuned_score - base_score
    total_seconds = time.perf_counter() - started
    run = json.loads((output_dir / "tuner_run.json").read_text())
    summary = {
        "heldout_prompts": len(rows),
        "base_score": round(base_score, 2),
        "finetuned_score": round(tuned_score, 2),
        "gap_points": round(gap, 2),
        "min_gap_points": MIN_GAP,
        "passed": gap >= MIN_GAP,
        "train_steps": run["steps"],
        "trained_tokens": run["trained_tokens"],
        "final_loss": round(run["final_loss"], 4),
        "seconds": {
            "train": round(train_seconds, 1),
            "score_base": round(base_seconds, 1),
            "score_finetuned": round(tuned_seconds, 1),
            "total": round(total_seconds, 1),
        },
    }
    (output_dir / "score.json").write_text(json.dumps(summary, indent=2) + "\n")
    (output_dir / "score_details.json").write_text(
        json.dumps({"base": base_results, "finetuned": tuned_results}, indent=2, ensure_ascii=False) + "\n"
    )

    print(f"""
== 3. result ({len(rows)} held-out prompts, exact match)
  base model         {base_score:6.1f} %
  fine-tuned model   {tuned_score:6.1f} %
  gap                {gap:+6.1f} points   (needed: +{MIN_GAP:.0f})

  wall time          train {train_seconds:.0f} s, score base {base_seconds:.0f} s, \
score fine-tuned {tuned_seconds:.0f} s, total {total_seconds:.0f} s
  written            {output_dir / 'score.json'} (every answer: score_details.json)
""")
    if gap < MIN_GAP:
        print(f"FAILED: the fine-tuned model gained only {gap:.1f} points (needed {MIN_GAP:.0f}).", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
