"""Axolotl capabilities its own example configs use, trained end to end on tiny random models:
LoRA on MoE expert parameters (lora_target_parameters) and early stopping."""

from __future__ import annotations

import pytest
import torch

from helpers import alpaca_rows, make_config, write_jsonl
from tiny_moe import EXPERT_PARAMETERS, make_tiny_moe
from tuner.train.loop import train


@pytest.fixture(scope="module")
def moe_dir(tmp_path_factory, smol_tokenizer_dir):
    return make_tiny_moe(tmp_path_factory.mktemp("tiny-moe"), smol_tokenizer_dir)


def test_lora_on_expert_parameters_trains_saves_and_reloads(tmp_path, moe_dir):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    data = write_jsonl(tmp_path / "data.jsonl", alpaca_rows(8))
    cfg = make_config(
        tmp_path, base_model=str(moe_dir), datasets=[{"path": str(data), "type": "alpaca"}],
        dataset_prepared_path=str(tmp_path / "prepared"), output_dir=str(tmp_path / "out"), sequence_len=64,
        micro_batch_size=4, max_steps=3, learning_rate=1e-2, lr_scheduler="constant", warmup_steps=0,
        adapter="lora", lora_r=4, lora_alpha=8, lora_dropout=0, lora_target_parameters=EXPERT_PARAMETERS,
    )
    result = train(cfg)
    assert len(result.losses) == 3 and all(torch.isfinite(torch.tensor(result.losses)))
    out = tmp_path / "out"
    saved = load_file(str(out / "adapter_model.safetensors"))
    expert_b = [k for k in saved if ".mlp.experts." in k and "lora_B" in k]
    assert len(expert_b) == 2 * 2, sorted(saved)  # 2 layers x (gate_up_proj, down_proj)
    assert all(saved[k].abs().sum() > 0 for k in expert_b)  # B starts at zero: these trained
    assert not [k for k in saved if "self_attn" in k]  # parameters only: no linear was adapted

    from tuner.export.merge import merge

    base = AutoModelForCausalLM.from_pretrained(moe_dir, dtype=torch.float32).eval()
    ids = torch.tensor([[1, 520, 4093, 30, 2070, 314]])
    with torch.no_grad():
        before = base(input_ids=ids).logits
        after = PeftModel.from_pretrained(base, out).eval()(input_ids=ids).logits
        merged = AutoModelForCausalLM.from_pretrained(merge(out, tmp_path / "merged"), dtype=torch.float32).eval()
        folded = merged(input_ids=ids).logits
    assert (after - before).abs().max() > 1e-4  # the reloaded adapter changes the experts' output
    assert torch.allclose(folded, after, atol=1e-5)  # merge-lora folds it into the expert tensors


def test_early_stopping_ends_the_run_once_eval_loss_stops_improving(tmp_path, smol_tokenizer_dir, caplog):
    """A learning rate too small to move an fp32 weight: every evaluation gives the same eval_loss, so
    the first sets the best and each later one fails to beat it. With patience 2 the run ends after
    the third evaluation (step 3 of 10), saved as at a normal end."""
    import json

    from helpers import make_tiny_model, read_metrics
    from tuner.train.checkpoint import RUN_RECORD

    base = make_tiny_model(tmp_path / "base", "llama", smol_tokenizer_dir)
    data = write_jsonl(tmp_path / "data.jsonl", alpaca_rows(24))
    cfg = make_config(
        tmp_path, base_model=str(base), datasets=[{"path": str(data), "type": "alpaca"}], val_set_size=4,
        dataset_prepared_path=str(tmp_path / "prepared"), output_dir=str(tmp_path / "out"), sequence_len=64,
        micro_batch_size=2, max_steps=10, learning_rate=1e-30, eval_steps=1, early_stopping_patience=2,
        adapter="lora", lora_r=4, lora_target_modules=["q_proj"],
    )
    with caplog.at_level("INFO", logger="tuner"):
        result = train(cfg)
    assert "early stopping: eval_loss has not improved on its best" in caplog.text
    assert "ending after step 3 of 10" in caplog.text
    out = tmp_path / "out"
    metrics = read_metrics(out)
    evals = [m["eval_loss"] for m in metrics if "eval_loss" in m]
    assert len(evals) == 3 and len(set(evals)) == 1, evals
    stop = [{k: v for k, v in m.items() if k != "time"} for m in metrics if m.get("event") == "early_stop"]
    assert stop == [{"event": "early_stop", "step": 3, "best_eval_loss": evals[0], "evals_without_improvement": 2}]
    assert result.steps == 3 and len(result.losses) == 3
    assert json.loads((out / RUN_RECORD).read_text())["steps"] == 3
    assert (out / "adapter_model.safetensors").is_file()  # saved as at a normal end
    assert [m for m in metrics if m.get("event") == "end"]


def test_a_gpt_oss_mxfp4_base_trains_with_lora_as_axolotls_example_configures_it(tmp_path, smol_tokenizer_dir, caplog):
    """Axolotl's gpt-oss LoRA example: MXFP4 base dequantized (model_quantization_config), a hub attention
    kernel asked for (read as sdpa, which gpt-oss lacks: eager), LoRA on every linear layer."""
    from tiny_moe import make_tiny_mxfp4_gpt_oss

    base = make_tiny_mxfp4_gpt_oss(tmp_path / "base", smol_tokenizer_dir)
    data = write_jsonl(tmp_path / "data.jsonl", alpaca_rows(8))
    cfg = make_config(
        tmp_path, base_model=str(base), datasets=[{"path": str(data), "type": "alpaca"}],
        dataset_prepared_path=str(tmp_path / "prepared"), output_dir=str(tmp_path / "out"), sequence_len=64,
        micro_batch_size=4, max_steps=2, learning_rate=1e-3, model_quantization_config="Mxfp4Config",
        model_quantization_config_kwargs={"dequantize": True}, attn_implementation="kernels-community/vllm-flash-attn3",
        adapter="lora", lora_r=4, lora_dropout=0.0, lora_target_linear=True,
    )
    with caplog.at_level("WARNING", logger="tuner"):
        result = train(cfg)
    assert "GptOssForCausalLM has no sdpa attention in transformers; it runs eager" in caplog.text
    assert len(result.losses) == 2 and all(torch.isfinite(torch.tensor(result.losses)))
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
