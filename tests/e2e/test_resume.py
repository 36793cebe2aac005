"""Checkpoints: a run killed between saves resumes to exactly the same result."""

from __future__ import annotations

import random
import signal
import subprocess

import pytest

from helpers import (
    alpaca_rows,
    load_weights,
    make_tiny_model,
    read_metrics,
    tuner_cmd,
    wait_for_step,
    write_config,
    write_jsonl,
)


def make_run(tmp_path, base, name, **extra):
    data = write_jsonl(tmp_path / "data.jsonl", alpaca_rows(24))
    values = dict(
        base_model=str(base),
        datasets=[{"path": str(data), "type": "alpaca"}],
        dataset_prepared_path=str(tmp_path / "prepared"),
        output_dir=str(tmp_path / name),
        sequence_len=128,
        micro_batch_size=2,
        gradient_accumulation_steps=2,
        max_steps=20,
        save_steps=5,
        learning_rate=2e-3,
        lr_scheduler="cosine",
        warmup_steps=2,
        optimizer="adamw_torch",
        bf16=False,
        seed=7,
    )
    values.update(extra)
    return write_config(tmp_path / f"{name}.yml", **values), tmp_path / name


@pytest.fixture
def tiny_base(tmp_path, smol_tokenizer_dir):
    import json

    base = make_tiny_model(tmp_path / "base", "llama", smol_tokenizer_dir)
    config = json.loads((base / "config.json").read_text())
    config["attention_dropout"] = 0.1  # dropout on: resume must restore the RNG exactly
    (base / "config.json").write_text(json.dumps(config))
    return base


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def losses_after(metrics, step):
    return [(m["step"], m["loss"]) for m in metrics if "loss" in m and m["step"] > step]


def test_sigkill_between_saves_then_resume_is_exact(tmp_path, tiny_base):
    ref_cfg, ref_out = make_run(tmp_path, tiny_base, "reference")
    assert subprocess.run(tuner_cmd("train", str(ref_cfg)), capture_output=True).returncode == 0

    cfg, out = make_run(tmp_path, tiny_base, "killed")
    target = random.Random().choice([6, 7, 8, 9, 11, 12, 13, 14])  # strictly between saves (5, 10, 15)
    proc = subprocess.Popen(tuner_cmd("train", str(cfg)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    reached = wait_for_step(proc, out, target)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert reached < 20, "the run finished before it could be killed"
    saved = sorted(p.name for p in (out / "checkpoints").iterdir() if (p / "checkpoint.json").exists())
    resume_step = int(saved[-1].split("-")[1])
    assert resume_step < reached and resume_step % 5 == 0

    res = subprocess.run(tuner_cmd("train", str(cfg), "--resume_from_checkpoint", "auto"), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert f"resuming from {out / 'checkpoints' / saved[-1]} at step {resume_step}" in res.stderr

    assert max_diff(load_weights(out / "model.safetensors"), load_weights(ref_out / "model.safetensors")) <= 1e-6
    ours, theirs = losses_after(read_metrics(out), resume_step), losses_after(read_metrics(ref_out), resume_step)
    assert [s for s, _ in ours] == list(range(resume_step + 1, 21)) == [s for s, _ in theirs]
    assert max(abs(a - b) for (_, a), (_, b) in zip(ours, theirs)) <= 1e-6
    # Steps logged before the kill and redone after the resume appear once.
    assert [m["step"] for m in read_metrics(out) if "loss" in m] == list(range(1, 21))


def test_sigterm_saves_a_resumable_checkpoint(tmp_path, tiny_base):
    cfg, out = make_run(tmp_path, tiny_base, "run", max_steps=40, save_steps=100)
    proc = subprocess.Popen(tuner_cmd("train", str(cfg)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_step(proc, out, 3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in err
    assert "--resume_from_checkpoint auto" in err
    saved = [p for p in (out / "checkpoints").iterdir() if (p / "checkpoint.json").exists()]
    assert len(saved) == 1
    stopped_at = int(saved[0].name.split("-")[1])
    assert 3 <= stopped_at < 40
    res = subprocess.run(tuner_cmd("train", str(cfg), "--resume_from_checkpoint", "auto"), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert [m["step"] for m in read_metrics(out) if "loss" in m] == list(range(1, 41))


def test_finished_run_is_not_overwritten(tmp_path, tiny_base):
    cfg, out = make_run(tmp_path, tiny_base, "run", max_steps=2)
    assert subprocess.run(tuner_cmd("train", str(cfg)), capture_output=True).returncode == 0
    again = subprocess.run(tuner_cmd("train", str(cfg)), capture_output=True, text=True)
    assert again.returncode == 2 and "already holds a finished run" in again.stderr and "Traceback" not in again.stderr
    forced = subprocess.run(tuner_cmd("train", str(cfg), "--overwrite_output_dir"), capture_output=True, text=True)
    assert forced.returncode == 0, forced.stderr
    assert [m["step"] for m in read_metrics(out) if "loss" in m] == [1, 2]


def test_eval_loss_and_perplexity(tmp_path, tiny_base):
    import math

    import torch
    from transformers import AutoModelForCausalLM

    from tuner.config import load_config
    from tuner.data.pack import pad_batch
    from tuner.data.pipeline import prepare
    from tuner.models.load import load_tokenizer, resolve_base, tokenizer_files
    from tuner.train.loss import CausalLMLoss, trained_token_count

    cfg_path, out = make_run(tmp_path, tiny_base, "run", max_steps=6, save_steps=100, val_set_size=0.25, eval_steps=2)
    res = subprocess.run(tuner_cmd("train", str(cfg_path)), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    evals = [m for m in read_metrics(out) if "eval_loss" in m]
    assert [m["step"] for m in evals] == [2, 4, 6]
    for m in evals:
        assert m["eval_perplexity"] == pytest.approx(math.exp(m["eval_loss"]))
    # The final eval loss is the trained-token mean over the held-out rows.
    cfg = load_config(cfg_path)
    base = resolve_base(cfg.model)
    data = prepare(cfg, load_tokenizer(cfg.model, base), tokenizer_files(cfg.model, base))
    assert data.eval.num_rows == 6
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    batch = pad_batch(data.eval["input_ids"], data.eval["labels"], 2)
    with torch.no_grad():
        direct = float(CausalLMLoss(model)(**batch)) / trained_token_count(batch["labels"])
    assert evals[-1]["eval_loss"] == pytest.approx(direct, rel=1e-5)
    assert evals[-1]["eval_tokens"] == trained_token_count(batch["labels"])
