"""Worker: run `python -m tuner train CONFIG` and read tuner's own metrics.jsonl back.

    python bench/_run_tuner.py CONFIG.yml --python TUNER_PYTHON --out result.json

Standard library only (the harness samples RSS from outside). The result holds, per
logged step: the wall time tuner wrote the record, the step's duration (trained tokens /
trained_tokens_per_second, the same `elapsed` tuner divided by), trained tokens and loss;
plus train_begin / train_end wall times for the RSS window.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml  # tuner's venv has PyYAML (tuner depends on it)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--python", default=sys.executable, help="the python of tuner's venv")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    cfg = yaml.safe_load(Path(args.config).read_text())
    out_dir = Path(cfg["output_dir"])
    cmd = [args.python, "-m", "tuner", "train", args.config]
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t1 = time.time()
    # tqdm redraws with \r: keep the last state of each line only
    log = "\n".join(line.split("\r")[-1] for line in proc.stdout.splitlines())
    print(log, flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"tuner train exited {proc.returncode}")

    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    records = [r for r in records if "loss" in r]
    steps, previous = [], 0
    for r in records:
        trained = r["trained_tokens"] - previous
        previous = r["trained_tokens"]
        duration = trained / r["trained_tokens_per_second"] if r["trained_tokens_per_second"] else float("nan")
        steps.append({"step": r["step"], "time": r["time"], "duration": duration, "trained": trained,
                      "loss": r["loss"], "tokens_per_second": r["tokens_per_second"]})
    if any(r["step"] != i + 1 for i, r in enumerate(steps)):
        raise SystemExit("metrics.jsonl does not log every step: set logging_steps: 1")

    match = re.search(r"precision (\S+), ([\d,]+) of ([\d,]+) parameters trainable", log)
    adapter_cfg = out_dir / "adapter_config.json"
    result = {
        "contender": "tuner",
        "process_start": t0,
        "process_end": t1,
        "train_begin": steps[0]["time"] - steps[0]["duration"],
        "train_end": steps[-1]["time"],
        "steps": steps,
        "precision": match.group(1) if match else None,
        "trainable": int(match.group(2).replace(",", "")) if match else None,
        "base_model_path": json.loads(adapter_cfg.read_text()).get("base_model_name_or_path")
        if adapter_cfg.is_file() else None,
        "run_record": json.loads((out_dir / "tuner_run.json").read_text()),
    }
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
