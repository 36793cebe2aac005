"""Adapters: QLoRA on the real SmolLM2, merging, added tokens with tied embeddings, DoRA /
rsLoRA, and the generate / chat commands."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from conftest import SMOL_BASE
from helpers import REPORTS, alpaca_rows, make_config, make_tiny_model, read_metrics, tuner_cmd, write_config, write_jsonl
from tuner.config import ConfigError
from tuner.errors import UserError
from tuner.train.loop import train


def smol_values(tmp_path, **extra):
    data = write_jsonl(tmp_path / "data.jsonl", alpaca_rows(16))
    values = dict(
        base_model=SMOL_BASE, datasets=[{"path": str(data), "type": "alpaca"}],
        dataset_prepared_path=str(tmp_path / "prepared"), output_dir=str(tmp_path / "out"),
        sequence_len=96, micro_batch_size=4, max_steps=6, learning_rate=2e-3, lr_scheduler="constant",
        adapter="lora", lora_r=8, lora_target_linear=True,
    )
    values.update(extra)
    return values


def logits_of(model, tokenizer, text="### Instruction:\nAdd the numbers.\n\n### Input:\n3 + 4"):
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


@pytest.mark.smollm2
@pytest.mark.slow  # bitsandbytes' 4-bit matmuls on CPU: minutes
def test_qlora_trains_saves_reloads_and_merges(tmp_path, smol_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from tuner.export.merge import merge

    cfg = make_config(tmp_path, **smol_values(tmp_path, adapter="qlora", load_in_4bit=True, bf16=True))
    result = train(cfg)
    assert sum(result.losses[-2:]) / 2 < sum(result.losses[:2]) / 2, result.losses
    out = tmp_path / "out"
    adapter_cfg = json.loads((out / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == str(smol_model_dir)  # the unquantized base folder

    tokenizer = AutoTokenizer.from_pretrained(out)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32)
    four_bit = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(smol_model_dir, quantization_config=quant, dtype=torch.float32), out
    ).eval()
    merged_dir = merge(out, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    a, b = logits_of(four_bit, tokenizer), logits_of(merged, tokenizer)
    diff = float((a - b).abs().mean())
    same_top = float((a.argmax(-1) == b.argmax(-1)).float().mean())
    # The base alone, 4-bit vs original: the quantization error the merge cannot avoid.
    base_4bit = AutoModelForCausalLM.from_pretrained(smol_model_dir, quantization_config=quant, dtype=torch.float32).eval()
    base_full = AutoModelForCausalLM.from_pretrained(smol_model_dir, dtype=torch.float32).eval()
    base_diff = float((logits_of(base_4bit, tokenizer) - logits_of(base_full, tokenizer)).abs().mean())
    REPORTS.append(
        f"QLoRA adapter merged into the original SmolLM2 vs the 4-bit base + adapter it trained on: mean abs logit "
        f"difference {diff:.3f} (same top-1 token at {same_top:.0%} of positions); the base alone, 4-bit vs "
        f"original: {base_diff:.3f}"
    )
    assert torch.isfinite(b).all()
    assert diff <= 1.5 * base_diff  # merging adds nothing beyond the base's quantization error


def test_merge_equals_base_plus_adapter(tmp_path, smol_tokenizer_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = make_tiny_model(tmp_path / "base", "llama", smol_tokenizer_dir)
    values = smol_values(tmp_path, base_model=str(base), learning_rate=1e-2, max_steps=4)
    train(make_config(tmp_path, **values))
    out = tmp_path / "out"
    res = subprocess.run(tuner_cmd("merge-lora", str(tmp_path / "config.yml"), "--output", str(tmp_path / "merged")),
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    assert tokenizer.chat_template  # saved with the merged model
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()  # plain transformers
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out).eval()
    assert torch.allclose(logits_of(merged, tokenizer), logits_of(with_adapter, tokenizer), atol=1e-4)
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["dtype"] == "float32"


@pytest.mark.smollm2
@pytest.mark.slow
def test_added_tokens_train_stay_tied_and_can_be_generated(tmp_path, smol_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuner.export.merge import merge

    rows = [{"instruction": f"Call the tool number {i}.", "input": "", "output": "<tool>"} for i in range(16)]
    data = write_jsonl(tmp_path / "tool.jsonl", rows)
    new_id = 49152  # SmolLM2 has 49152 tokens: the first added one gets this id
    with pytest.raises(UserError, match="peft_trainable_token_indices"):
        train(make_config(tmp_path, **smol_values(tmp_path, tokens=["<tool>"], datasets=[{"path": str(data), "type": "alpaca"}])))
    values = smol_values(tmp_path, tokens=["<tool>"], peft_trainable_token_indices=[new_id],
                         datasets=[{"path": str(data), "type": "alpaca"}], max_steps=12, learning_rate=1e-2)
    result = train(make_config(tmp_path, **values))
    assert result.losses[-1] < 0.5 * result.losses[0], result.losses

    out = tmp_path / "out"
    merged_dir = merge(out, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    assert tokenizer.convert_tokens_to_ids("<tool>") == new_id
    embed, head = merged.get_input_embeddings().weight, merged.get_output_embeddings().weight
    assert merged.config.tie_word_embeddings and torch.equal(embed[new_id], head[new_id])
    base = AutoModelForCausalLM.from_pretrained(smol_model_dir, dtype=torch.float32)
    base.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    assert not torch.allclose(embed[new_id], base.get_input_embeddings().weight[new_id])  # the new row trained
    res = subprocess.run(tuner_cmd("generate", str(tmp_path / "config.yml"), "--prompt", "Call the tool number 99.",
                                   "--max-new-tokens", "3", "--model-dir", str(merged_dir)), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    from tuner.data.formats.alpaca import prompt as alpaca_prompt

    ids = tokenizer(alpaca_prompt({"instruction": "Call the tool number 99.", "input": ""}), return_tensors="pt")
    with torch.no_grad():
        first = merged.generate(**ids, max_new_tokens=1, do_sample=False)[0, -1]
    assert int(first) == new_id


def test_dora_and_rslora_reach_peft(tmp_path, smol_tokenizer_dir):
    base = make_tiny_model(tmp_path / "base", "qwen2", smol_tokenizer_dir)
    values = smol_values(tmp_path, base_model=str(base), peft_use_dora=True, peft_use_rslora=True, max_steps=2,
                         lora_modules_to_save=["lm_head"])
    train(make_config(tmp_path, **values))
    adapter_cfg = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert adapter_cfg["use_dora"] is True and adapter_cfg["use_rslora"] is True
    assert adapter_cfg["modules_to_save"] == ["lm_head"]


def test_continue_training_an_adapter(tmp_path, smol_tokenizer_dir):
    base = make_tiny_model(tmp_path / "base", "llama", smol_tokenizer_dir)
    train(make_config(tmp_path, **smol_values(tmp_path, base_model=str(base), max_steps=3)))
    first = json.loads((tmp_path / "out" / "tuner_run.json").read_text())["final_loss"]
    again = smol_values(tmp_path, base_model=str(base), max_steps=3, lora_model_dir=str(tmp_path / "out"),
                        output_dir=str(tmp_path / "out2"))
    result = train(make_config(tmp_path, **again))
    first_logged = next(r["loss"] for r in read_metrics(tmp_path / "out") if "loss" in r)
    assert result.losses[0] < first_logged  # starts from the trained adapter, not from zero
    assert first > 0


def test_unfrozen_parameters_train_only_matching(tmp_path, smol_tokenizer_dir):
    from safetensors.torch import load_file

    base = make_tiny_model(tmp_path / "base", "llama", smol_tokenizer_dir)
    values = smol_values(tmp_path, base_model=str(base), adapter=None, lora_r=None, lora_target_linear=None,
                         unfrozen_parameters=[r"layers\.1\.mlp\."], max_steps=2)
    train(make_config(tmp_path, **values))
    before, after = load_file(base / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".layers.1.mlp." in k for k in changed)


def test_bad_adapter_configs(tmp_path):
    for extra, words in [
        ({"adapter": "qlora"}, "needs `load_in_4bit: true`"),
        ({"load_in_8bit": True, "adapter": "qlora", "load_in_4bit": True}, "both true"),
        ({"adapter": None, "lora_r": None, "lora_target_linear": None, "load_in_4bit": True}, "no adapter"),
    ]:
        with pytest.raises(ConfigError, match=words):
            make_config(tmp_path, **smol_values(tmp_path, **extra))


@pytest.mark.smollm2
@pytest.mark.slow
def test_generate_and_chat_on_smollm2(tmp_path, smol_model_dir):
    chat_rows = [{"messages": [{"role": "user", "content": f"Say the code word {i}."},
                               {"role": "assistant", "content": f"Code word {i}: BANANA."}]} for i in range(12)]
    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows)
    cfg = write_config(tmp_path / "chat.yml", **smol_values(tmp_path, datasets=[{"path": str(data), "type": "chat_template"}],
                                                            max_steps=8, learning_rate=3e-3))
    assert subprocess.run(tuner_cmd("train", str(cfg)), capture_output=True).returncode == 0
    gen = subprocess.run(tuner_cmd("generate", str(cfg), "--prompt", "Say the code word 77.", "--max-new-tokens", "12"),
                         capture_output=True, text=True)
    assert gen.returncode == 0, gen.stderr
    assert "BANANA" in gen.stdout
    chat = subprocess.run(tuner_cmd("chat", str(cfg), "--max-new-tokens", "12"), input="Say the code word 5.\nSay the code word 6.\n",
                          capture_output=True, text=True)
    assert chat.returncode == 0, chat.stderr
    answers = [line for line in chat.stdout.splitlines() if line.strip()]
    assert len(answers) == 2 and all("BANANA" in a for a in answers), chat.stdout
