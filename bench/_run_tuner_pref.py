"""Worker (tuner's venv) for bench/preference_throughput.py: tuner's preference-training side.

    python bench/_run_tuner_pref.py plan CONFIG.yml --steps N --out plan.json
    python bench/_run_tuner_pref.py train CONFIG.yml --out result.json

`plan` (not timed): prepares the data with tuner and replays tuner's step plan (its seeded
shuffle) for the first N steps: which prepared pairs each step trains and their tokens
(chosen + rejected sequences, prompt included, as tuner's and TRL's tokens/s count them),
plus every prepared pair as text (its prompt, chosen and rejected completion decoded from
tuner's token ids) so that the TRL worker trains the same pairs in the same order on the
same tokens (the harness checks the token counts step by step).

`train`: runs `python -m tuner train CONFIG` in a subprocess and reads tuner's own
metrics.jsonl back (logging_steps must be 1): per step the time tuner spent training it
(`train_seconds`: the step's batches, forward, backward and optimizer step; no evaluation or
saving), its pairs and its tokens; train_begin / train_end wall times for the RSS window.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def plan(config: str, steps: int, out: str) -> None:
    from tuner.config import load_config
    from tuner.data.pairs import PairBatches
    from tuner.data.pipeline import prepare
    from tuner.models.inputs import load_inputs
    from tuner.train.step_plan import StepPlan

    cfg = load_config(config)
    inputs = load_inputs(cfg)
    tok = inputs.tokenizer
    rows = prepare(cfg, tok, inputs.tokenizer_files).train
    batches = PairBatches(rows, tok.pad_token_id)
    step_plan = StepPlan.build(batches.units, cfg.training, 1)
    per_step = []
    for step, _epoch, micro_batches in step_plan.steps(0):
        if step >= steps:
            break
        units = [u for mb in micro_batches for u in mb]
        per_step.append({"units": units, "pairs": len(units), "tokens": batches.tokens(units)})

    def text(ids: list[int]) -> str:
        return tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    pairs = []
    for cut, chosen, rejected in zip(rows["prompt_len"], rows["chosen_input_ids"], rows["rejected_input_ids"]):
        pairs.append({"prompt": text(chosen[:cut]), "chosen": text(chosen[cut:]), "rejected": text(rejected[cut:]),
                      "tokens": len(chosen) + len(rejected)})
    import tuner

    Path(out).write_text(json.dumps({"prepared_pairs": batches.units, "steps": per_step, "pairs": pairs,
                                     "tuner_imported_from": tuner.__file__}))


def train(config: str, python: str, out: str) -> None:
    import yaml  # tuner depends on PyYAML

    cfg = yaml.safe_load(Path(config).read_text())
    out_dir = Path(cfg["output_dir"])
    cmd = [python, "-m", "tuner", "train", config]
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    t1 = time.time()
    print("\n".join(line.split("\r")[-1] for line in proc.stdout.splitlines()), flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"tuner train exited {proc.returncode}")
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    records = [r for r in records if "loss" in r and "train_seconds" in r]
    if any(r["step"] != i + 1 for i, r in enumerate(records)):
        raise SystemExit("metrics.jsonl does not log every step: set logging_steps: 1")
    steps, previous = [], 0
    for r in records:
        steps.append({"step": r["step"], "time": r["time"], "duration": r["train_seconds"],
                      "pairs": r["pairs"] - previous, "real": round(r["tokens_per_second"] * r["train_seconds"]),
                      "loss": r["loss"], "rewards/accuracies": r.get("rewards/accuracies"),
                      "rewards/margins": r.get("rewards/margins")})
        previous = r["pairs"]
    result = {
        "contender": "tuner_dpo",
        "process_start": t0,
        "process_end": t1,
        "train_begin": steps[0]["time"] - steps[0]["duration"],
        "train_end": steps[-1]["time"],
        "steps": steps,
        "run_record": json.loads((out_dir / "tuner_run.json").read_text()),
    }
    Path(out).write_text(json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["plan", "train"])
    ap.add_argument("config")
    ap.add_argument("--steps", type=int, default=0, help="plan: steps to replay")
    ap.add_argument("--python", default=sys.executable, help="train: the python of tuner's venv")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    if a.mode == "plan":
        plan(a.config, a.steps, a.out)
    else:
        train(a.config, a.python, a.out)


if __name__ == "__main__":
    main()
