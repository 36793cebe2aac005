"""Preference training end to end on a tiny random Llama (the SmolLM2 tokenizer and chat
template): the loss of a step is normalised by its pairs over all micro-batches and processes;
a killed DPO run resumes exactly; QLoRA, merge-lora, eval and every method run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import load_weights, make_config, make_tiny_model, read_metrics, tuner_cmd, wait_for_step, write_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"
PAIRS = EXAMPLES / "preference_train.jsonl"
KTO = EXAMPLES / "kto_train.jsonl"


@pytest.fixture(scope="module")
def base(tmp_path_factory, smol_tokenizer_dir):
    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama") / "base", "llama", smol_tokenizer_dir)


def values(tmp_path, base, name="out", **extra):
    out = dict(
        base_model=str(base), rl="dpo", rl_beta=0.1,
        datasets=[{"path": str(PAIRS), "type": "chat_template.default"}],
        dataset_prepared_path=str(tmp_path / "prepared"), output_dir=str(tmp_path / name),
        sequence_len=128, micro_batch_size=2, gradient_accumulation_steps=1, max_steps=4, learning_rate=5e-3,
        lr_scheduler="constant", optimizer="adamw_torch", bf16=False, seed=3,
        adapter="lora", lora_r=4, lora_alpha=8, lora_target_linear=True,
    )
    out.update(extra)
    return out


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def test_accumulation_4x2_equals_one_batch_of_8(tmp_path, base):
    """Pairs of very different lengths: a mean of micro-batch means would weigh them unequally."""
    from tuner.train.loop import train

    big = train(make_config(tmp_path, **values(tmp_path, base, "big", micro_batch_size=8, max_steps=1)))
    small = train(make_config(tmp_path, **values(tmp_path, base, "small", micro_batch_size=2,
                                                   gradient_accumulation_steps=4, max_steps=1)))
    assert big.losses[0] == pytest.approx(small.losses[0], abs=1e-6)
    assert max_diff(load_weights(tmp_path / "big" / "adapter_model.safetensors"),
                    load_weights(tmp_path / "small" / "adapter_model.safetensors")) < 1e-6
    step = [m for m in read_metrics(tmp_path / "small") if "loss" in m][0]
    assert step["pairs"] == 8 and 0 <= step["rewards/accuracies"] <= 1
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"):
        assert key in step


def test_sigkill_then_resume_is_exact(tmp_path, base):
    ref = write_config(tmp_path / "ref.yml", **values(tmp_path, base, "ref", max_steps=8, save_steps=3))
    assert subprocess.run(tuner_cmd("train", str(ref)), capture_output=True).returncode == 0
    cfg = write_config(tmp_path / "killed.yml", **values(tmp_path, base, "killed", max_steps=8, save_steps=3))
    proc = subprocess.Popen(tuner_cmd("train", str(cfg)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    reached = wait_for_step(proc, tmp_path / "killed", 4)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert reached < 8
    resumed = subprocess.run(tuner_cmd("train", str(cfg), "--resume_from_checkpoint", "auto"), capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert max_diff(load_weights(tmp_path / "killed" / "adapter_model.safetensors"),
                    load_weights(tmp_path / "ref" / "adapter_model.safetensors")) < 1e-6
    logged = lambda out: {m["step"]: m["loss"] for m in read_metrics(out) if "loss" in m}  # noqa: E731
    killed, ref = logged(tmp_path / "killed"), logged(tmp_path / "ref")
    assert sorted(killed) == sorted(ref) == list(range(1, 9))
    assert [killed[s] for s in range(1, 9)] == pytest.approx([ref[s] for s in range(1, 9)], abs=1e-6)


def test_eval_metrics_then_merge_lora(tmp_path, base):
    cfg = write_config(tmp_path / "dpo.yml", **values(tmp_path, base, val_set_size=8, max_steps=3, eval_steps=2))
    res = subprocess.run(tuner_cmd("train", str(cfg)), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    evals = [m for m in read_metrics(tmp_path / "out") if "eval_loss" in m]
    assert [m["step"] for m in evals] == [2, 3] and all(m["eval_pairs"] == 8 for m in evals)
    assert all(k in evals[0] for k in ("eval_rewards/accuracies", "eval_rewards/margins", "eval_logps/chosen"))
    merged = subprocess.run(tuner_cmd("merge-lora", str(cfg)), capture_output=True, text=True)
    assert merged.returncode == 0, merged.stderr
    assert (tmp_path / "out" / "merged" / "model.safetensors").is_file()


def test_two_processes_equal_one(tmp_path, base):
    """Plain SGD, so that the weights show the gradients' agreement (Adam divides tiny gradients by
    their own size, turning sub-1e-7 summation-order noise into visible differences)."""
    common = dict(max_steps=2, optimizer="sgd", learning_rate=0.5)
    one = write_config(tmp_path / "one.yml", **values(tmp_path, base, "one", micro_batch_size=4, **common))
    two = write_config(tmp_path / "two.yml", **values(tmp_path, base, "two", micro_batch_size=2, **common))
    assert subprocess.run(tuner_cmd("train", str(one)), capture_output=True).returncode == 0
    res = subprocess.run(tuner_cmd("train", str(two), "--num-processes", "2"), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert max_diff(load_weights(tmp_path / "one" / "adapter_model.safetensors"),
                    load_weights(tmp_path / "two" / "adapter_model.safetensors")) < 1e-5


@pytest.mark.parametrize("method,extra", [
    ("ipo", {}),
    ("simpo", {"simpo_gamma": 0.5}),
    ("orpo", {"orpo_alpha": 0.1, "rl_beta": None}),
    ("dpo", {"rpo_alpha": 0.5, "precompute_ref_log_probs": True}),
    ("dpo", {"adapter": "qlora", "load_in_4bit": True}),
    ("dpo", {"adapter": None, "lora_r": None, "lora_alpha": None, "lora_target_linear": None}),  # a frozen full copy
    ("kto", {"datasets": [{"path": str(KTO), "type": "passthrough"}], "kto_undesirable_weight": 1.5}),
])
def test_every_method_trains(tmp_path, base, method, extra):
    from tuner.train.loop import train

    cfg = {**values(tmp_path, base, rl=method, max_steps=3), **extra}
    result = train(make_config(tmp_path, **{k: v for k, v in cfg.items() if v is not None}))
    assert all(map(lambda x: x == x, result.losses)), result.losses  # finite, not NaN
    records = [m for m in read_metrics(tmp_path / "out") if "loss" in m]
    assert len(records) == 3 and "rewards/chosen" in records[-1]
    record = json.loads((tmp_path / "out" / "tuner_run.json").read_text())
    assert record["steps"] == 3
