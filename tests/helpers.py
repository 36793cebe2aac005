"""Test helpers: configs, data files and tiny random models built offline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from tuner.config import load_config

# Lines tests want shown at the end of the run (counts of fuzzed configs, bad rows, ...).
REPORTS: list[str] = []
from tuner.config.schema import TunerConfig


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_config(path: Path, **values: Any) -> Path:
    path.write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
    return path


def class_names(data: dict[str, Any]) -> list:
    """The CLI's class-name check (tuner.models.resolve), passed to validation as the CLI does."""
    from tuner.models.resolve import class_name_problems

    return class_name_problems(data.get("model_type"), data.get("tokenizer_type"))


def make_config(tmp_path: Path, **values: Any) -> TunerConfig:
    return load_config(write_config(tmp_path / "config.yml", **values), checks=[class_names])


def alpaca_rows(n: int = 40) -> list[dict[str, str]]:
    """Small, distinct alpaca rows: half with an input, outputs of different lengths."""
    rows = []
    for i in range(n):
        if i % 2:
            a, b = 10 + i, 3 * i + 1
            rows.append({"instruction": "Add the numbers.", "input": f"{a} + {b}", "output": f"The sum is {a + b}."})
        else:
            word = ("step", "blue", "tree", "lamp", "fish")[i % 5]
            count = 1 + i % 9
            rows.append(
                {"instruction": f"Repeat the word {word} {count} times.", "input": "", "output": " ".join([word] * count)}
            )
    return rows


TINY_FAMILIES = ("llama", "qwen2", "mistral", "gemma")


def make_tiny_model(out: Path, family: str, tokenizer_dir: Path, seed: int = 0) -> Path:
    """A 2-layer random model of `family` with the SmolLM2 tokenizer, saved as an HF folder."""
    import torch
    from transformers import AutoModelForCausalLM, GemmaConfig, LlamaConfig, MistralConfig, Qwen2Config

    common = dict(
        vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )
    config = {
        "llama": lambda: LlamaConfig(**common, tie_word_embeddings=True),
        "qwen2": lambda: Qwen2Config(**common, tie_word_embeddings=False),
        "mistral": lambda: MistralConfig(**common, sliding_window=None),
        "gemma": lambda: GemmaConfig(**common, head_dim=16),
    }[family]()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out)
    for f in Path(tokenizer_dir).iterdir():
        shutil.copy(f, out / f.name)
    return out


def tuner_cmd(*args: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "tuner", *args]


def read_metrics(out_dir: Path) -> list[dict[str, Any]]:
    path = Path(out_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for_step(proc, out_dir: Path, step: int, timeout: float = 300) -> int:
    """Poll metrics.jsonl until `step` is logged; return the newest logged step."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        steps = [m["step"] for m in read_metrics(out_dir) if "loss" in m]
        if steps and steps[-1] >= step:
            return steps[-1]
        if proc.poll() is not None:
            raise AssertionError(f"training exited early with code {proc.returncode}")
        time.sleep(0.01)
    raise AssertionError(f"step {step} not reached in {timeout}s")


def load_weights(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path))
