"""pretraining_dataset end to end on a tiny model: a run SIGKILLed between saves resumes on the same
tokens (the same weights and losses as an uninterrupted run), and two gloo processes each stream
their own part of the corpus."""

from __future__ import annotations

import json
import random
import signal
import subprocess

import pytest

from helpers import load_weights, make_tiny_model, read_metrics, tuner_cmd, wait_for_step, write_config, write_jsonl

STEPS, SAVE = 8, 3


@pytest.fixture(scope="module")
def base(tmp_path_factory, smol_tokenizer_dir):
    return make_tiny_model(tmp_path_factory.mktemp("stream-base") / "base", "llama", smol_tokenizer_dir)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    words = ["river", "stone", "cloud", "lamp", "tree", "bird", "road", "glass", "salt", "wind"]
    for shard in range(4):
        write_jsonl(folder / f"part-{shard}.jsonl",
                    [{"text": f"doc {shard}.{i}: " + " ".join(rng.choice(words) for _ in range(rng.randint(5, 60)))}
                     for i in range(40)])
    return folder


def make_run(tmp_path, base, corpus, name, **extra):
    values = dict(base_model=str(base), pretraining_dataset=[{"path": str(corpus), "type": "pretrain", "skip": 3}],
                  output_dir=str(tmp_path / name), sequence_len=64, micro_batch_size=2, gradient_accumulation_steps=2,
                  max_steps=STEPS, save_steps=SAVE, learning_rate=2e-3, optimizer="adamw_torch", bf16=False, seed=5)
    values.update(extra)
    return write_config(tmp_path / f"{name}.yml", **values), tmp_path / name


def max_diff(a, b):
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.mark.slow  # three tuner processes (~100 s on the shared 2 cores): make test-slow, which CI runs
def test_a_killed_stream_run_resumes_on_the_same_tokens(tmp_path, base, corpus):
    ref_cfg, ref_out = make_run(tmp_path, base, corpus, "reference")
    ref = subprocess.run(tuner_cmd("train", str(ref_cfg)), capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    assert "streaming" in ref.stderr and "packed rows of 64 tokens" in ref.stderr

    cfg, out = make_run(tmp_path, base, corpus, "killed")
    target = random.Random().choice([4, 5, 7])  # strictly between saves (3, 6)
    proc = subprocess.Popen(tuner_cmd("train", str(cfg)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    reached = wait_for_step(proc, out, target)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert reached < STEPS, "the run finished before it could be killed"
    saved = sorted(p for p in (out / "checkpoints").iterdir() if (p / "checkpoint.json").exists())
    resume_step = int(saved[-1].name.split("-")[1])
    assert resume_step < reached and resume_step % SAVE == 0
    position = json.loads((saved[-1] / "data-0.json").read_text())
    assert position["rows_served"] == resume_step * 2 * 2

    res = subprocess.run(tuner_cmd("train", str(cfg), "--resume_from_checkpoint", "auto"), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert max_diff(load_weights(out / "model.safetensors"), load_weights(ref_out / "model.safetensors")) <= 1e-6
    ours = [(m["step"], m["loss"]) for m in read_metrics(out) if "loss" in m and m["step"] > resume_step]
    theirs = [(m["step"], m["loss"]) for m in read_metrics(ref_out) if "loss" in m and m["step"] > resume_step]
    assert [s for s, _ in ours] == [s for s, _ in theirs] == list(range(resume_step + 1, STEPS + 1))
    assert max(abs(a - b) for (_, a), (_, b) in zip(ours, theirs)) <= 1e-6


@pytest.mark.slow  # two gloo processes (~40 s idle, 100 s under load): make test-slow
def test_two_processes_stream_their_own_parts(tmp_path, base, corpus, smol_tokenizer):
    from tuner.config import load_config
    from tuner.data.stream import stream_data

    cfg_path, out = make_run(tmp_path, base, corpus, "two", max_steps=3, save_steps=2, gradient_accumulation_steps=1)
    res = subprocess.run(tuner_cmd("train", str(cfg_path), "--num-processes", "2"), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "tuner_run.json").read_text())["world_size"] == 2
    positions = [json.loads((out / "checkpoints" / "step-000002" / f"data-{r}.json").read_text()) for r in (0, 1)]
    assert [(p["rank"], p["world_size"], p["rows_served"]) for p in positions] == [(0, 2, 4), (1, 2, 4)]
    # what each process trained on up to that checkpoint: its own rows, no document in both
    cfg = load_config(cfg_path)
    trained = []
    for rank in (0, 1):
        stream = stream_data(cfg, smol_tokenizer, [], rank, 2).train
        rows = [stream.next_row() for _ in range(4)]
        trained.append({smol_tokenizer.decode(ids).split(":")[0] for row in rows for ids, _ in row if ids})
        assert {**stream.state_dict(), "fingerprint": None} == {**positions[rank], "fingerprint": None}
    assert not {t for t in trained[0] if t.startswith("doc")} & {t for t in trained[1] if t.startswith("doc")}
