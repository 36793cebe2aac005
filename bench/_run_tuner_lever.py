"""Worker (tuner's venv): `tuner train CONFIG` in this process, with some of tuner's memory
constants set to other values first, for an on/off measurement of one lever.

    python bench/_run_tuner_lever.py CONFIG.yml [--set tuner.train.loss.LOSS_CHUNK_BYTES=1207959552 ...]

Runs tuner's own command line (`tuner.cli.main(["train", CONFIG])`), so the process is what
`tuner train` would be, apart from the constants named with --set (integers). Levers with an
environment switch of their own (TUNER_MALLOC, TUNER_SELECTIVE_RECOMPUTE) are set by the
harness in the environment instead. Prints the values it set, so the log says what ran.

While tuner trains, a thread watches metrics.jsonl and notes this process's CPU seconds
(all threads, `time.process_time`) as each step record appears; they are written to
OUTPUT_DIR/cpu_steps.json: on a machine shared with other work, CPU seconds per step vary
much less than wall seconds per step.

With --probe PATH, bench/_memprobe.py samples where this process's memory is (RSS by kind,
glibc's heap in use / free / mmapped) every 20 ms and writes the sample at the peak and named
marks: after the libraries a LoRA run imports (torch, transformers, accelerate,
datasets; peft comes with tuner, which imports it without bitsandbytes; imported here first,
which changes nothing, tuner imports them anyway), when setup
is done (metrics.jsonl's start record: data, model, adapter and optimizer built), and at each
step record.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import threading
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--set", action="append", default=[], metavar="MODULE.NAME=INT")
    ap.add_argument("--probe", default=None, help="write bench/_memprobe.py's readings here (JSON)")
    args = ap.parse_args()
    probe = None
    if args.probe:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import _memprobe

        probe = _memprobe.Probe().start()
        for name in ("torch", "transformers", "transformers.models.llama.modeling_llama", "accelerate",
                     "datasets"):
            importlib.import_module(name)

        probe.mark("libraries imported")
    for item in args.set:
        target, value = item.split("=", 1)
        module_name, name = target.rsplit(".", 1)
        module = importlib.import_module(module_name)
        if not hasattr(module, name):
            raise SystemExit(f"{module_name} has no {name}")
        setattr(module, name, int(value))
        print(f"set {target} = {value} (was the default)", flush=True)
    import yaml

    out_dir = Path(yaml.safe_load(Path(args.config).read_text())["output_dir"])
    notes: list[dict] = []
    done = threading.Event()

    def watch() -> None:
        seen = 0
        while not done.is_set():
            path = out_dir / "metrics.jsonl"
            if path.is_file():
                lines = [x for x in path.read_text().splitlines() if x.strip()]
                cpu, wall = time.process_time(), time.time()
                for line in lines[seen:]:
                    record = json.loads(line)
                    if "loss" in record and "train_seconds" in record:
                        notes.append({"step": record["step"], "cpu": cpu, "wall": wall})
                        if probe is not None:
                            probe.mark(f"step {record['step']}")
                    elif record.get("event") == "start" and probe is not None:
                        probe.mark("setup done")
                seen = len(lines)
            done.wait(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    from tuner.cli import main as tuner_main

    try:
        return tuner_main(["train", args.config])
    finally:
        done.set()
        thread.join()
        if out_dir.is_dir():
            (out_dir / "cpu_steps.json").write_text(json.dumps(notes))
        if probe is not None:
            probe.stop()
            probe.write(args.probe)


if __name__ == "__main__":
    sys.exit(main())
