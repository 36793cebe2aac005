"""Axolotl's Ministral example (`tokenizer_use_mistral_common: true`, QLoRA, chat_template) trains two
steps through `tuner train` unchanged but for base_model (a tiny random Mistral carrying a tokenizer
file of the mistral-common wheel: its v7 sentencepiece model, which loads in a tenth of a second where
a Tekken file takes seconds; tests/unit/test_mistral_common.py covers Tekken), the data path and the
lengths; the prepared rows are mistral-common's encoding with only the assistant turns trained."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from helpers import tuner_cmd

mistral_common = pytest.importorskip("mistral_common", reason="the mistral extra is part of dev")

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "tests" / "fixtures" / "axolotl_examples" / "ministral" / "ministral-small-qlora.yaml"
DATA = REPO / "examples" / "data" / "chat_sample.jsonl"
SPM_V7 = Path(mistral_common.__file__).parent / "data" / "mistral_instruct_tokenizer_241114.model.v7"


@pytest.fixture(scope="module")
def tiny_mistral(tmp_path_factory) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, MistralConfig

    out = tmp_path_factory.mktemp("tiny-mistral-v7")
    config = MistralConfig(vocab_size=32768, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                           bos_token_id=1, eos_token_id=2, pad_token_id=0, sliding_window=None)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(out)
    (out / "tokenizer.model.v7").symlink_to(SPM_V7)
    return out


def test_ministral_example_trains_with_mistral_common(tmp_path, tiny_mistral):
    out, prepared = tmp_path / "out", tmp_path / "prepared"
    args = ["train", str(EXAMPLE), "--base_model", str(tiny_mistral), "--datasets.0.path", str(DATA),
            "--sequence_len", "128", "--max_steps", "2", "--val_set_size", "0",
            "--output_dir", str(out), "--dataset_prepared_path", str(prepared)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    res = subprocess.run(tuner_cmd(*args), capture_output=True, text=True, cwd=tmp_path, env=env, timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "Traceback" not in res.stderr
    losses = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(losses) == 2 and all(0 < loss < 20 for loss in losses), losses
    assert (out / "adapter_config.json").is_file() and (out / "tokenizer.model.v7").is_file()  # the tokenizer it trained with

    from datasets import load_from_disk
    from mistral_common.protocol.instruct.messages import AssistantMessage
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    [folder] = [p for p in prepared.iterdir() if (p / "meta.json").is_file()]
    rows = load_from_disk(str(folder / "rows"))
    ref = MistralTokenizer.from_file(str(SPM_V7))
    answers = [m["content"] for line in DATA.read_text().splitlines() for m in json.loads(line)["messages"]
               if m["role"] == "assistant"]
    expected = sorted(tuple(ref.instruct_tokenizer.encode_assistant_message(AssistantMessage(content=a), False))
                      for a in answers)
    trained = []
    for labels in rows["labels"]:
        run: list[int] = []
        for label in [*labels, -100]:
            if label != -100:
                run.append(label)
            elif run:
                trained.append(tuple(run))
                run = []
    assert sorted(trained) == expected  # every assistant turn (content + EOS), nothing else
