"""Two processes (gloo, CPU) train exactly like one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import load_weights, make_tiny_model, tuner_cmd, write_config, write_jsonl
from tuner.data.pack import shuffled_order

SEED, ROWS = 7, 24


def skewed_rows() -> list[dict]:
    """Rows placed so that, in every global micro-batch, process 0 gets short answers and
    process 1 long ones (trained tokens differ more than 5x between the processes)."""
    order = shuffled_order(ROWS, SEED)  # the loop's first-epoch order
    rows: list[dict] = [{}] * ROWS
    for pos, row in enumerate(order):
        long = pos % 4 >= 2  # global micro-batch of 4 = 2 rows for process 0, then 2 for process 1
        answer = " ".join(f"word{k}" for k in range(25)) if long else "ok"
        rows[row] = {"instruction": f"Task {row}: answer.", "input": "", "output": answer}
    return rows


def run_config(tmp_path: Path, base: Path, name: str, micro: int) -> Path:
    data = write_jsonl(tmp_path / "data.jsonl", skewed_rows())
    return write_config(
        tmp_path / f"{name}.yml", base_model=str(base), datasets=[{"path": str(data), "type": "alpaca"}],
        dataset_prepared_path=str(tmp_path / f"prepared-{name}"), output_dir=str(tmp_path / name),
        sequence_len=128, micro_batch_size=micro, gradient_accumulation_steps=2, max_steps=3,
        learning_rate=1e-3, optimizer="adamw_torch", seed=SEED, bf16=False,
    )


def max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_two_processes_equal_one(tmp_path, smol_tokenizer_dir):
    base = make_tiny_model(tmp_path / "base", "llama", smol_tokenizer_dir)
    one = subprocess.run(tuner_cmd("train", str(run_config(tmp_path, base, "one", 4))), capture_output=True, text=True)
    assert one.returncode == 0, one.stderr
    two = subprocess.run(tuner_cmd("train", str(run_config(tmp_path, base, "two", 2)), "--num-processes", "2"),
                         capture_output=True, text=True)
    assert two.returncode == 0, two.stderr
    assert json.loads((tmp_path / "two" / "tuner_run.json").read_text())["world_size"] == 2
    assert json.loads((tmp_path / "one" / "tuner_run.json").read_text())["world_size"] == 1
    # Only one process prepared the dataset; the other read it.
    assert two.stderr.count("preparing datasets into") == 1

    # The rows really are skewed: trained tokens per process differ more than 5x.
    from tuner.config import load_config
    from tuner.data.pipeline import prepare
    from tuner.models.load import load_tokenizer, resolve_base, tokenizer_files

    cfg = load_config(tmp_path / "two.yml")
    b = resolve_base(cfg.model)
    rows = prepare(cfg, load_tokenizer(cfg.model, b), tokenizer_files(cfg.model, b)).train
    order = shuffled_order(ROWS, SEED)
    trained = [sum(1 for i, l in enumerate(rows[r]["labels"]) if i and l != -100) for r in order[:4]]
    assert sum(trained[2:]) > 5 * sum(trained[:2])

    ref = load_weights(tmp_path / "one" / "model.safetensors")
    assert max_diff(load_weights(tmp_path / "two" / "model.safetensors"), ref) <= 1e-5

    control = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(Path(__file__).with_name("per_process_mean.py")), "train", str(run_config(tmp_path, base, "control", 2))],
        capture_output=True, text=True, env={**os.environ, "TUNER_EXPECTED_WORLD_SIZE": "2"},
    )
    assert control.returncode == 0, control.stderr
    assert max_diff(load_weights(tmp_path / "control" / "model.safetensors"), ref) > 1e-5


def test_world_size_mismatch_is_an_error(tmp_path, smol_tokenizer_dir):
    base = make_tiny_model(tmp_path / "base", "llama", smol_tokenizer_dir)
    res = subprocess.run(tuner_cmd("train", str(run_config(tmp_path, base, "one", 4))), capture_output=True, text=True,
                         env={**os.environ, "TUNER_EXPECTED_WORLD_SIZE": "2"})
    assert res.returncode == 2
    assert "asked for 2 training processes but accelerate runs 1" in res.stderr and "Traceback" not in res.stderr
