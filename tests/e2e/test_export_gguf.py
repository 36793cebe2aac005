"""export-gguf: round trips through transformers' GGUF loader and through tuner's own
`base_model: x.gguf`, the CLI on a LoRA-trained output, and the refusals.

llama.cpp itself (the real runtime) is checked by `make check-gguf` (bench/check_gguf.py):
greedy decodes on the quickstart's held-out prompts, and the logits of each family's tiny model.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import (
    REPORTS,
    alpaca_rows,
    make_config,
    make_tiny_model,
    write_config,
    write_jsonl,
)

from tuner.errors import UserError

TEXT = "Below is an instruction.\n\n### Instruction:\nConvert Mar 5th 2021 to ISO 8601.\n\n### Response:\n2021-03-05"
BOUND = {"f32": 1e-4, "f16": 1e-2, "bf16": 1e-2}


def logits(model, tokenizer, text=TEXT):
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def load_gguf(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()


def load_hf(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()


@pytest.fixture(autouse=True)
def _cli_log_handlers():
    """tuner.cli.main() adds a stderr handler to tuner's logger per call; calls made here in-process
    would otherwise leave handlers writing to an earlier test's captured (closed) stderr."""
    import logging

    logger = logging.getLogger("tuner")
    before = list(logger.handlers)
    yield
    logger.handlers[:] = before


@pytest.fixture(scope="module")
def tiny_tokenizer_dir(tmp_path_factory, smol_tokenizer):
    """A byte-level BPE tokenizer like SmolLM2's (same special tokens at ids 0-2, same chat
    template) with 512 tokens: gguf's reader builds a Python object per vocabulary entry, so
    reading a file with SmolLM2's 49,152 tokens and merges costs about 10 s of CPU each time."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tuner.data.formats.alpaca import prompt as alpaca_prompt
    from tuner.models.load import PROBE_STRINGS

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    texts = [TEXT, *PROBE_STRINGS] + [alpaca_prompt(r) + r["output"] for r in alpaca_rows(40)]
    backend.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=512, special_tokens=specials, show_progress=False,
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        unk_token="<|endoftext|>", pad_token="<|im_end|>")
    tokenizer.chat_template = smol_tokenizer.chat_template
    out = tmp_path_factory.mktemp("tiny-tokenizer")
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_tokenizer_dir):
    """A tiny random model of a family with the 512-token tokenizer (made once per module)."""
    from transformers import AutoTokenizer

    made = {}

    def get(family):
        if family not in made:
            folder = make_tiny_model(tmp_path_factory.mktemp(family), family, tiny_tokenizer_dir)
            model = load_hf(folder)
            model.resize_token_embeddings(len(AutoTokenizer.from_pretrained(str(folder))))
            model.save_pretrained(folder)
            made[family] = folder
        return made[family]

    return get


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny):
    """The GGUF of a tiny model in a quantization (exported once per module)."""
    from tuner.export.gguf import export

    files = {}

    def get(family, quant):
        if (family, quant) not in files:
            files[family, quant] = export(tiny(family), tmp_path_factory.mktemp("gguf") / f"{family}-{quant}.gguf", quant).path
        return files[family, quant]

    return get


@pytest.mark.parametrize("family,quants", [("llama", ("f32", "f16", "bf16")), ("qwen2", ("f32",)), ("mistral", ("f32",))])
def test_tiny_families_round_trip_through_transformers(tiny, exported, tiny_tokenizer, family, quants):
    reference = logits(load_hf(tiny(family)), tiny_tokenizer)
    diffs = {}
    for quant in quants:
        diffs[quant] = float((logits(load_gguf(exported(family, quant)), tiny_tokenizer) - reference).abs().max())
    REPORTS.append(f"GGUF round trip, tiny {family}: max abs logit difference "
                   + ", ".join(f"{q} {d:.1e}" for q, d in diffs.items()))
    for quant, diff in diffs.items():
        assert diff <= BOUND[quant], (quant, diff)


def test_gemma_file_follows_llama_cpp_conventions(tmp_path, tiny):
    """transformers cannot load a `gemma` GGUF, so the file is read with gguf's reader: llama.cpp's
    gemma stores norms as 1 + w, has no output matrix, and states head_dim as key/value length.
    (llama.cpp running it is checked by make check-gguf.)"""
    import gguf
    from safetensors.torch import load_file

    from tuner.export.gguf import export

    folder = tiny("gemma")
    hf = load_file(str(folder / "model.safetensors"))
    reader = gguf.GGUFReader(str(export(folder, tmp_path / "gemma.gguf", "f32").path))
    tensors = {t.name: np.asarray(t.data) for t in reader.tensors}
    assert set(tensors) == {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{i}.{n}.weight" for i in range(2)
        for n in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")
    }
    assert np.array_equal(tensors["output_norm.weight"], hf["model.norm.weight"].numpy() + 1)
    assert np.array_equal(tensors["blk.1.ffn_norm.weight"], hf["model.layers.1.post_attention_layernorm.weight"].numpy() + 1)
    assert np.array_equal(tensors["blk.0.attn_q.weight"], hf["model.layers.0.self_attn.q_proj.weight"].numpy())  # NeoX rotary: as is
    assert np.array_equal(tensors["token_embd.weight"], hf["model.embed_tokens.weight"].numpy())  # unscaled
    fields = reader.fields
    assert fields["general.architecture"].contents() == "gemma"
    assert fields["gemma.attention.key_length"].contents() == 16 == fields["gemma.attention.value_length"].contents()


def test_permutation_is_llama_cpps_interleaved_rotary_layout():
    """Within a head, HF pairs row j with row j + d/2; llama.cpp pairs 2i with 2i + 1."""
    from tuner.export.gguf import permute_rotary_rows

    head_dim, heads = 8, 2
    rows = torch.arange(heads * head_dim).reshape(heads * head_dim, 1)
    out = permute_rotary_rows(rows, heads).flatten().tolist()
    assert out[:8] == [0, 4, 1, 5, 2, 6, 3, 7] and out[8:] == [8, 12, 9, 13, 10, 14, 11, 15]


def test_exported_file_loads_back_into_tuner_as_base_model(tmp_path, tiny, exported, monkeypatch):
    """`base_model: out.gguf` gives the same weights, tokenizer and chat template back."""
    from transformers import AutoTokenizer

    from tuner.config.schema import ModelBlock
    from tuner.models.load import (
        PROBE_STRINGS,
        load_model,
        load_tokenizer,
        resolve_base,
    )

    monkeypatch.setenv("TUNER_CACHE", str(tmp_path / "cache"))
    folder, path = tiny("llama"), exported("llama", "f32")
    block = ModelBlock(base_model=str(path))
    base = resolve_base(block)
    assert base.kind == "gguf"
    tokenizer = load_tokenizer(block, base)
    model = load_model(block, base, tokenizer, torch.float32).eval()
    original = AutoTokenizer.from_pretrained(str(folder))
    for text in PROBE_STRINGS + (TEXT, "<|im_start|>user\nHi<|im_end|>"):
        assert tokenizer(text)["input_ids"] == original(text)["input_ids"], text
    assert tokenizer.chat_template == original.chat_template
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (original.bos_token_id, original.eos_token_id)
    assert float((logits(model, tokenizer) - logits(load_hf(folder), original)).abs().max()) <= 1e-4


@pytest.mark.smollm2
@pytest.mark.parametrize("quant", ["f16", pytest.param("q8_0", marks=pytest.mark.extra)])
def test_smollm2_round_trip(tmp_path, smol_model_dir, smol_tokenizer, quant):
    """The real model through transformers' GGUF loader (about 25 s of CPU per load, most of it
    gguf's reader building the 49,152 tokens and 48,900 merges: q8_0 runs with -m extra). Against
    the float32 model an f16 file differs by f16's own rounding of the weights: the file holds
    exactly the model with its matrices rounded to f16 (norms stay float32, as in the file)."""
    from tuner.export.gguf import export

    model = load_hf(smol_model_dir)
    reference = logits(model, smol_tokenizer)
    result = export(smol_model_dir, tmp_path / f"smol-{quant}.gguf", quant)
    back = logits(load_gguf(result.path), smol_tokenizer)
    diff = float((back - reference).abs().max())
    mean = float((back - reference).abs().mean())
    same_top = float((back.argmax(-1) == reference.argmax(-1)).float().mean())
    line = (f"GGUF round trip, SmolLM2-135M {quant} ({result.bytes / 2**20:.0f} MiB of tensors) vs its float32 HF "
            f"folder: max abs logit difference {diff:.4f}, mean {mean:.4f}, same top-1 token at {same_top:.0%} of positions")
    if quant == "f16":
        with torch.no_grad():
            for p in model.parameters():
                if p.ndim == 2:
                    p.copy_(p.half().float())
        rounded = float((back - logits(model, smol_tokenizer)).abs().max())
        REPORTS.append(line + f"; vs the HF model with its matrices rounded to f16: {rounded:.1e}")
        assert rounded <= 1e-4  # the file is the model, to f16 rounding
        assert diff <= 0.1 and same_top == 1.0  # measured: 0.033
    else:
        REPORTS.append(line)
        assert diff <= 2.0 and same_top >= 0.9  # measured: 1.0 and 98%


def test_cli_exports_a_lora_output_with_its_training_prompt_as_chat_template(tmp_path, tiny, tiny_tokenizer, capsys):
    """tuner train (2 LoRA steps, an added token) then `tuner export-gguf config.yml`: the adapter
    is merged, the file has the added token and renders the Alpaca prompt the model trained on."""
    import gguf
    from jinja2 import Environment
    from transformers import AutoTokenizer

    from tuner.cli import main
    from tuner.data.formats.alpaca import prompt as alpaca_prompt
    from tuner.export.merge import merge
    from tuner.train.loop import train

    data = write_jsonl(tmp_path / "data.jsonl", alpaca_rows(16))
    train(make_config(
        tmp_path, base_model=str(tiny("llama")), datasets=[{"path": str(data), "type": "alpaca"}],
        dataset_prepared_path=str(tmp_path / "prepared"), output_dir=str(tmp_path / "out"),
        sequence_len=256, micro_batch_size=4, max_steps=2, learning_rate=1e-2, adapter="lora", lora_r=8,
        lora_target_linear=True, tokens=["<tool>"], peft_trainable_token_indices=[len(tiny_tokenizer)],
    ))
    config = tmp_path / "config.yml"
    assert main(["export-gguf", str(config)]) == 0
    printed = capsys.readouterr().out
    path = tmp_path / "out" / "gguf" / "model-f16.gguf"
    assert f"GGUF saved to {path}" in printed and "llama-cli -m" in printed

    reader = gguf.GGUFReader(str(path))
    tokens = reader.fields["tokenizer.ggml.tokens"]
    assert len(tokens.data) == len(tiny_tokenizer) + 1 and tokens.contents(len(tiny_tokenizer)) == "<tool>"
    template = reader.fields["tokenizer.chat_template"].contents()
    row = {"instruction": "Add the numbers.", "input": "3 + 4"}
    render = Environment().from_string(template).render
    assert render(messages=[{"role": "system", "content": row["instruction"]}, {"role": "user", "content": row["input"]}],
                  bos_token="", eos_token="<|im_end|>") == alpaca_prompt(row)
    assert render(messages=[{"role": "user", "content": "Hi."}], bos_token="", eos_token="") == alpaca_prompt(
        {"instruction": "Hi.", "input": ""})

    merged = merge(tmp_path / "out", tmp_path / "merged", "float32")
    tokenizer = AutoTokenizer.from_pretrained(str(merged))
    diff = float((logits(load_gguf(path), tokenizer) - logits(load_hf(merged), tokenizer)).abs().max())
    assert diff <= 1e-2, diff

    assert main(["export-gguf", str(config), "--quant", "q8_0", "--output", str(tmp_path / "q.gguf")]) == 0
    assert gguf.GGUFReader(str(tmp_path / "q.gguf")).fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q8_0


def test_refusals_name_what_is_available(tmp_path, tiny, capsys):
    from tuner.cli import main
    from tuner.export.gguf import export

    data = write_jsonl(tmp_path / "data.jsonl", alpaca_rows(2))
    config = write_config(tmp_path / "config.yml", base_model=str(tiny("llama")), output_dir=str(tiny("llama")),
                          datasets=[{"path": str(data), "type": "alpaca"}], learning_rate=1e-4, max_steps=1)
    assert main(["export-gguf", str(config), "--quant", "q4_k_m"]) == 2
    err = capsys.readouterr().err
    assert "'q4_k_m' is not a type tuner can write" in err and "q8_0" in err and "llama-quantize" in err
    assert "Traceback" not in err

    other = tmp_path / "gpt2"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    assert main(["export-gguf", str(config), "--model-dir", str(other)]) == 2
    err = capsys.readouterr().err
    assert "model_type 'gpt2'" in err and "supported: llama, mistral, qwen2, gemma" in err
    assert not list(tmp_path.glob("**/*.gguf"))  # refused before any work

    with pytest.raises(UserError, match="Did you mean 'q8_0'"):
        export(tiny("llama"), tmp_path / "x.gguf", "q8_1")
