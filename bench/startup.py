"""Start-up: seconds from process start to the first training step, on already-prepared data.

    .venv/bin/python bench/startup.py                      # examples/quickstart.yml, 5 repetitions
    .venv/bin/python bench/startup.py --repeats 9 --config examples/quickstart.yml

Each repetition starts `python -m tuner train CONFIG` (the data prepared once before, not
timed) and watches its output folder: tuner writes the `{"event": "start"}` record of
metrics.jsonl when setup is done, just before the first step's forward. Measured at that
moment: wall seconds since the process was started, and the CPU seconds the process has used
(user + system, from /proc/PID/stat; on a machine shared with other work the CPU seconds move
less than the wall clock). The process is then stopped (the steps are not the point here).

For reference, the same two numbers for processes that only import (`-c "import torch"`, and
the libraries a LoRA run cannot do without: torch, transformers' model class, accelerate,
peft, datasets), so the part that is tuner's own shows. `PYTHONPATH=OTHER_CHECKOUT/src` runs
another version of tuner with the same venv (for a before/after). Medians and min-max over repetitions.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The libraries a LoRA run cannot do without (peft without bitsandbytes, as tuner imports it).
FLOOR = ("import sys, torch, transformers, accelerate, datasets; from transformers import LlamaForCausalLM; "
         "sys.modules['bitsandbytes'] = None; import peft; del sys.modules['bitsandbytes']")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def until_start(cmd: list[str], metrics: Path, env: dict[str, str], timeout: float) -> tuple[float, float]:
    """(wall, cpu) seconds from start until metrics.jsonl holds the start record."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        while time.perf_counter() - t0 < timeout:
            if metrics.is_file() and '"event": "start"' in metrics.read_text():
                wall, cpu = time.perf_counter() - t0, cpu_seconds(proc.pid)
                return wall, cpu
            if proc.poll() is not None:
                raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr.read()[-3000:]}")
            time.sleep(0.01)
        raise SystemExit(f"no start record after {timeout} s")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def import_only(python: str, code: str, env: dict[str, str]) -> tuple[float, float]:
    """(wall, cpu) seconds of a process that runs `code` and exits."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([python, "-c", code], env=env, cwd=REPO)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{code!r} exited {proc.returncode}")
    return time.perf_counter() - t0, usage.ru_utime + usage.ru_stime


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="examples/quickstart.yml")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--compare", metavar="SRC", help="also run the tuner in SRC (another checkout's src/), alternated")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    versions = {"tuner train (this checkout)": env}
    if a.compare:
        versions[f"tuner train ({a.compare})"] = dict(env, PYTHONPATH=a.compare)
    with tempfile.TemporaryDirectory() as tmp:
        overrides = ["--dataset_prepared_path", f"{tmp}/prepared", "--max_steps", "1"]
        for version_env in versions.values():  # each version's own fingerprint: prepared once, not timed
            subprocess.run([a.python, "-m", "tuner", "preprocess", a.config, *overrides], env=version_env, cwd=REPO,
                           check=True, capture_output=True)
        rows: dict[str, list[tuple[float, float]]] = {name: [] for name in versions}
        rows.update({"import torch": [], "import the libraries": []})
        for rep in range(a.repeats):
            for i, (name, version_env) in enumerate(versions.items()):
                out = Path(tmp) / f"out-{rep}-{i}"
                cmd = [a.python, "-m", "tuner", "train", a.config, *overrides, "--output_dir", str(out)]
                rows[name].append(until_start(cmd, out / "metrics.jsonl", version_env, a.timeout))
            rows["import torch"].append(import_only(a.python, "import torch", env))
            rows["import the libraries"].append(import_only(a.python, FLOOR, env))
    print(f"{a.config}: seconds from process start to the first step (tuner) or to exit (imports); "
          f"{a.repeats} repetitions, median (min-max)")
    width = max(len(n) for n in rows) + 2
    print(f"{'':{width}} {'wall':>20} {'cpu':>20}")
    for name, values in rows.items():
        print(f"{name:{width}} {summary([w for w, _ in values]):>20} {summary([c for _, c in values]):>20}")
    if a.json:
        Path(a.json).write_text(json.dumps({k: [{"wall": w, "cpu": c} for w, c in v] for k, v in rows.items()}, indent=2))


if __name__ == "__main__":
    main()
