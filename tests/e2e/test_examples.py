"""Every runnable example: its data prepares, and the chat example trains and saves the
template that trained it with the tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuner.config import load_config
from tuner.data.pipeline import prepare
from tuner.models.load import load_tokenizer, resolve_base, tokenizer_files

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p for p in (REPO / "examples").glob("*.yml"))
pytestmark = pytest.mark.smollm2


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_data_prepares(path, tmp_path, monkeypatch, smol_model_dir):
    monkeypatch.chdir(REPO)  # examples use paths relative to the repository root
    cfg = load_config(path, ["--dataset_prepared_path", str(tmp_path / "prepared")])
    base = resolve_base(cfg.model)
    prepared = prepare(cfg, load_tokenizer(cfg.model, base), tokenizer_files(cfg.model, base))
    assert prepared.train.num_rows > 0
    if cfg.preference.rl == "grpo":  # prompts only: the completions are sampled (and trained) in training
        assert prepared.stats["tokens"] > 0 and prepared.stats["trained_tokens"] == 0
    else:
        assert prepared.stats["trained_tokens"] > 0
    assert all(s["invalid"] == 0 for s in prepared.stats["sources"])


def test_chat_example_trains_and_saves_its_template(tmp_path, monkeypatch, smol_model_dir):
    from transformers import AutoTokenizer

    from tuner.data.templates import CHATML
    from tuner.train.loop import train

    monkeypatch.chdir(REPO)
    cfg = load_config(REPO / "examples" / "sharegpt.yml", [
        "--dataset_prepared_path", str(tmp_path / "prepared"), "--output_dir", str(tmp_path / "out"),
        "--max_steps", "2", "--num_epochs", "null",
    ])
    result = train(cfg)
    assert len(result.losses) == 2
    saved = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert saved.chat_template == CHATML  # the template that trained the model, not SmolLM2's own
    assert json.loads((tmp_path / "out" / "adapter_config.json").read_text())["r"] == 8


@pytest.mark.extra  # the quickstart config on SmolLM2 for minutes: `make quickstart` runs it whole, with its score
def test_quickstart_then_generate_answers_in_the_trained_format(tmp_path, smol_model_dir):
    """The quickstart config, cut to 16 steps: `tuner generate` on held-out dates (instruction
    and input through the Alpaca prompt it trained on) answers with ISO dates. The base model
    answers few of these in that form (the quickstart scores it at about 10%)."""
    import csv
    import re
    import subprocess

    from helpers import tuner_cmd

    overrides = ["--dataset_prepared_path", str(tmp_path / "prepared"), "--output_dir", str(tmp_path / "out"),
                 "--num_epochs", "null", "--max_steps", "16", "--warmup_steps", "2"]
    config = str(REPO / "examples" / "quickstart.yml")
    trained = subprocess.run(tuner_cmd("train", config, *overrides), cwd=REPO, capture_output=True, text=True)
    assert trained.returncode == 0, trained.stderr[-2000:]
    with open(REPO / "examples" / "data" / "quickstart_heldout.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[:3]
    for row in rows:
        gen = subprocess.run(tuner_cmd("generate", config, *overrides, "--prompt", row["instruction"],
                                       "--input", row["input"], "--max-new-tokens", "14"),
                             cwd=REPO, capture_output=True, text=True)
        assert gen.returncode == 0, gen.stderr[-2000:]
        answer = gen.stdout.strip().splitlines()[0]
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", answer), (row["input"], gen.stdout)


def test_a_prompt_dataset_says_what_trains(tmp_path, monkeypatch, smol_model_dir):
    """rl: grpo prepares prompts only: the summary says their completions train, not "0 trained"."""
    from tuner.data.pipeline import describe

    monkeypatch.chdir(REPO)
    cfg = load_config(REPO / "examples" / "grpo.yml", ["--dataset_prepared_path", str(tmp_path / "prepared")])
    base = resolve_base(cfg.model)
    prepared = prepare(cfg, load_tokenizer(cfg.model, base), tokenizer_files(cfg.model, base))
    total = describe(prepared.stats)[-1]
    assert "prompts only" in total and "0 trained" not in total, total
