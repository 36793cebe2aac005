"""Runs that go wrong: non-finite losses, models that are not what they claim, secrets."""

from __future__ import annotations

import json
import math
import os
import pickle
import subprocess

import pytest

import tuner.train.loop as loop
from helpers import alpaca_rows, make_config, make_tiny_model, read_metrics, tuner_cmd, write_config, write_jsonl
from tuner.errors import UserError


def values(tmp_path, base, **extra):
    data = write_jsonl(tmp_path / "data.jsonl", alpaca_rows(16))
    out = dict(
        base_model=str(base), datasets=[{"path": str(data), "type": "alpaca"}],
        dataset_prepared_path=str(tmp_path / "prepared"), output_dir=str(tmp_path / "out"),
        sequence_len=128, micro_batch_size=2, max_steps=8, save_steps=2, learning_rate=1e-3,
    )
    out.update(extra)
    return out


@pytest.fixture
def nan_at_step(monkeypatch):
    """Make the loss of one optimizer step NaN (counting calls of the loss function)."""
    def install(bad_step: int, micro_batches: int = 1):
        from tuner.train.loss import CausalLMLoss

        real = CausalLMLoss.forward
        calls = {"n": 0}

        def fake(self, **batch):
            calls["n"] += 1
            value = real(self, **batch)
            step = (calls["n"] - 1) // micro_batches + 1
            return value * math.nan if step == bad_step else value

        monkeypatch.setattr(CausalLMLoss, "forward", fake)
    return install


def test_nan_stops_with_step_and_last_good_checkpoint(tmp_path, smol_tokenizer_dir, nan_at_step):
    base = make_tiny_model(tmp_path / "base", "llama", smol_tokenizer_dir)
    nan_at_step(5)
    with pytest.raises(UserError) as info:
        loop.train(make_config(tmp_path, **values(tmp_path, base)))
    msg = str(info.value)
    assert "at step 5" in msg and "nan_policy: stop" in msg
    assert f"Last good checkpoint: {tmp_path / 'out' / 'checkpoints' / 'step-000004'}" in msg


def test_nan_skip_skips_and_counts(tmp_path, smol_tokenizer_dir, nan_at_step):
    base = make_tiny_model(tmp_path / "base", "llama", smol_tokenizer_dir)
    nan_at_step(3)
    result = loop.train(make_config(tmp_path, **values(tmp_path, base, nan_policy="skip")))
    assert math.isnan(result.losses[2]) and all(math.isfinite(x) for i, x in enumerate(result.losses) if i != 2)
    metrics = read_metrics(tmp_path / "out")
    steps = [m for m in metrics if "loss" in m]
    assert steps[-1]["skipped_steps"] == 1 and all(math.isfinite(m["loss"]) for m in steps if m["step"] != 3)


def test_model_needing_remote_code_is_explained(tmp_path):
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "my_custom_lm", "auto_map": {"AutoConfig": "configuration_my.MyConfig",
                                                   "AutoModelForCausalLM": "modeling_my.MyModel"},
    }))
    (folder / "configuration_my.py").write_text("raise SystemExit('remote code ran')\n")
    cfg = write_config(tmp_path / "c.yml", **values(tmp_path, folder))
    res = subprocess.run(tuner_cmd("train", str(cfg)), capture_output=True, text=True)
    assert res.returncode == 2, res.stderr
    assert "trust_remote_code: true" in res.stderr and "only do it for code you trust" in res.stderr
    assert "remote code ran" not in res.stderr and "Traceback" not in res.stderr


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_where_weights_are_expected_is_not_run(tmp_path, smol_tokenizer_dir):
    base = make_tiny_model(tmp_path / "base", "llama", smol_tokenizer_dir)
    (base / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    (base / "pytorch_model.bin").write_bytes(pickle.dumps({"model.embed_tokens.weight": Payload(marker)}))
    cfg = write_config(tmp_path / "c.yml", **values(tmp_path, base))
    res = subprocess.run(tuner_cmd("train", str(cfg)), capture_output=True, text=True)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and "weights" in res.stderr
    assert not marker.exists()


def test_unreadable_model_folder(tmp_path, smol_tokenizer_dir):
    if os.geteuid() == 0:
        # root reads everything; a folder with broken weights stands in for "unreadable".
        base = make_tiny_model(tmp_path / "base", "llama", smol_tokenizer_dir)
        (base / "model.safetensors").write_bytes(b"\x00" * 64)
    else:
        base = make_tiny_model(tmp_path / "base", "llama", smol_tokenizer_dir)
        (base / "model.safetensors").chmod(0)
    cfg = write_config(tmp_path / "c.yml", **values(tmp_path, base))
    res = subprocess.run(tuner_cmd("train", str(cfg)), capture_output=True, text=True)
    assert res.returncode == 2, res.stderr
    assert "cannot load weights" in res.stderr and "Traceback" not in res.stderr


def test_gguf_of_unsupported_architecture(tmp_path):
    import gguf
    import numpy as np

    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), "mamba9000")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    cfg = write_config(tmp_path / "c.yml", **values(tmp_path, path))
    env = {**os.environ, "TUNER_CACHE": str(tmp_path / "cache")}
    res = subprocess.run(tuner_cmd("train", str(cfg)), capture_output=True, text=True, env=env)
    assert res.returncode == 2, res.stderr
    assert "mamba9000" in res.stderr and "GGUF" in res.stderr and "Traceback" not in res.stderr


def test_secrets_never_written(tmp_path, smol_tokenizer_dir):
    secret_hf, secret_wandb = "hf_SECRETtokenDoNotLeak123", "wandb_SECRETkeyDoNotLeak456"
    base = make_tiny_model(tmp_path / "base", "llama", smol_tokenizer_dir)
    cfg = write_config(tmp_path / "c.yml", **values(tmp_path, base, max_steps=2, use_tensorboard=True, use_mlflow=True,
                                                      wandb_project="p", wandb_mode="offline"))
    env = {**os.environ, "HF_TOKEN": secret_hf, "HUGGING_FACE_HUB_TOKEN": secret_hf, "WANDB_API_KEY": secret_wandb,
           "WANDB_SILENT": "true"}
    outputs = []
    for args in (("validate", str(cfg)), ("train", str(cfg))):
        res = subprocess.run(tuner_cmd(*args), capture_output=True, text=True, env=env)
        assert res.returncode == 0, res.stderr
        outputs += [res.stdout, res.stderr]
    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file()] + [p for p in (tmp_path / "prepared").rglob("*") if p.is_file()]
    assert len(written) > 5
    for text in outputs + [p.read_bytes().decode("utf-8", "replace") for p in written]:
        assert secret_hf not in text and secret_wandb not in text
