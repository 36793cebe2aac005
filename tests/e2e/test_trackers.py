"""Trackers, for real and offline: what TensorBoard, W&B and MLflow hold equals metrics.jsonl;
the report's picture is drawn and its summary matches metrics.jsonl."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from helpers import alpaca_rows, make_tiny_model, read_metrics, tuner_cmd, write_config, write_jsonl
from tuner.config import load_config
from tuner.errors import UserError


@pytest.fixture(scope="module")
def run(tmp_path_factory, smol_tokenizer_dir):
    tmp = tmp_path_factory.mktemp("trackers")
    base = make_tiny_model(tmp / "base", "llama", smol_tokenizer_dir)
    data = write_jsonl(tmp / "data.jsonl", alpaca_rows(24))
    cfg = write_config(
        tmp / "c.yml", base_model=str(base), datasets=[{"path": str(data), "type": "alpaca"}],
        dataset_prepared_path=str(tmp / "prepared"), output_dir=str(tmp / "out"), sequence_len=128,
        micro_batch_size=4, max_steps=6, learning_rate=3e-3, val_set_size=4, eval_steps=3,
        use_tensorboard=True, wandb_project="tuner-test", wandb_mode="offline", use_mlflow=True,
    )
    env = {**os.environ, "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true"}
    res = subprocess.run(tuner_cmd("train", str(cfg)), capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    return tmp / "out", res


def expected(out, key):
    return {m["step"]: m[key] for m in read_metrics(out) if key in m}


def test_tensorboard_holds_the_same_numbers(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = run
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    for key in ("loss", "learning_rate", "eval_loss"):
        got = {e.step: e.value for e in acc.Scalars(key)}
        want = expected(out, key)
        assert got.keys() == want.keys() and all(got[s] == pytest.approx(want[s], rel=1e-6) for s in want), key


def wandb_records(path):
    """The protobuf records of an offline .wandb file: a 7-byte header, then the LevelDB log
    format (32 KiB blocks; each chunk: crc32 (4), length (2), type (1: full, 2: first, 3: middle, 4: last))."""
    import struct

    data, pos, block, pending = path.read_bytes(), 7, 32768, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk


def test_wandb_offline_run_holds_the_same_numbers(run):
    from wandb.proto import wandb_internal_pb2

    out, _ = run
    [run_file] = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    history = []
    for data in wandb_records(run_file):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
    got = {int(h["_step"]): h["loss"] for h in history if "loss" in h}
    want = expected(out, "loss")
    assert got.keys() == want.keys() and all(got[s] == pytest.approx(want[s], rel=1e-6) for s in want)
    got_eval = {int(h["_step"]): h["eval_loss"] for h in history if "eval_loss" in h}
    assert got_eval == pytest.approx(expected(out, "eval_loss"), rel=1e-6)


def test_mlflow_file_store_holds_the_same_numbers(run):
    from mlflow.tracking import MlflowClient

    out, _ = run
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # reading tuner's default local file store
    client = MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    [experiment] = [e for e in client.search_experiments() if e.name == "tuner"]
    [mlrun] = client.search_runs([experiment.experiment_id])
    for key in ("loss", "eval_loss", "trained_tokens"):
        got = {m.step: m.value for m in client.get_metric_history(mlrun.info.run_id, key)}
        want = expected(out, key)
        assert got.keys() == want.keys() and all(got[s] == pytest.approx(want[s], rel=1e-6) for s in want), key
    assert mlrun.data.params["learning_rate"] == "0.003"


def test_report_png_and_summary(run):
    from PIL import Image

    out, res = run
    image = Image.open(out / "report.png").convert("L")
    assert image.size == (800, 900)
    lo, hi = image.getextrema()
    assert hi - lo > 100  # not blank: lines and text on white
    summary = json.loads((out / "summary.json").read_text())
    steps = [m for m in read_metrics(out) if "loss" in m]
    evals = [m for m in read_metrics(out) if "eval_loss" in m]
    assert summary["steps"] == 6 and summary["trained_tokens"] == steps[-1]["trained_tokens"]
    assert summary["final_train_loss"] == steps[-1]["loss"]
    assert summary["final_eval_loss"] == evals[-1]["eval_loss"]
    assert summary["best_eval_loss"] == min(m["eval_loss"] for m in evals)
    assert summary["finished"] and summary["saved_to"] == str(out)
    assert "summary: steps 6 of 6" in res.stderr
    again = subprocess.run(tuner_cmd("report", str(out)), capture_output=True, text=True)
    assert again.returncode == 0 and "steps 6 of 6" in again.stdout


def test_missing_tracker_names_the_extra(monkeypatch, tmp_path):
    import builtins

    from tuner.train.log import open_trackers

    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("no wandb here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    (tmp_path / "c.yml").write_text("base_model: x\ndatasets: [{path: d.jsonl, type: alpaca}]\nlearning_rate: 1.0e-4\n"
                                    "num_epochs: 1\nwandb_project: p\n")
    t = load_config(tmp_path / "c.yml").training
    import importlib

    monkeypatch.setattr(importlib, "import_module", lambda name: no_wandb(name))
    with pytest.raises(UserError, match=r"pip install 'tuner\[wandb\]'"):
        open_trackers(t, tmp_path, {})
