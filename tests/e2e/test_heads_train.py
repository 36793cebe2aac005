"""Reward models and sequence classifiers end to end on a tiny random Llama (the SmolLM2
tokenizer and chat template): they train, save (LoRA: the new score head in modules_to_save),
reload with plain transformers and score exactly as tuner's evaluation scored (fp32, 1e-4);
`tuner score`, merge-lora and transformers' text-classification pipeline work on the output;
`tuner info` names the head."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import make_config, make_tiny_model, read_metrics, write_config, write_jsonl

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"
PAIRS = EXAMPLES / "preference_train.jsonl"
WORDS = {"good": ["great", "lovely", "wonderful", "fine", "superb"], "bad": ["awful", "dreadful", "poor", "ugly", "grim"]}


@pytest.fixture(scope="module")
def base(tmp_path_factory, smol_tokenizer_dir):
    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama") / "base", "llama", smol_tokenizer_dir)


def common(tmp_path, base, name, **extra):
    out = dict(base_model=str(base), dataset_prepared_path=str(tmp_path / "prepared"), output_dir=str(tmp_path / name),
               sequence_len=128, micro_batch_size=4, max_steps=4, learning_rate=5e-3, lr_scheduler="constant",
               optimizer="adamw_torch", bf16=False, seed=3, val_set_size=8)
    out.update(extra)
    return out


LORA = dict(adapter="lora", lora_r=4, lora_alpha=8, lora_target_linear=True)


def padded_scores(model, docs, pad):
    """Plain transformers: a right-padded batch with its attention mask, the model's own forward."""
    width = max(map(len, docs))
    ids = torch.full((len(docs), width), pad)
    mask = torch.zeros_like(ids)
    for i, d in enumerate(docs):
        ids[i, : len(d)], mask[i, : len(d)] = torch.tensor(d), 1
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits.double()


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory, base):
    from tuner.train.loop import train

    tmp = tmp_path_factory.mktemp("reward")
    values = common(tmp, base, "out", reward_model=True, center_rewards_coefficient=0.01,
                    datasets=[{"path": str(PAIRS), "type": "chat_template.default"}], eval_steps=4, **LORA)
    cfg = make_config(tmp, **values)
    return tmp, cfg, train(cfg), values


def test_reward_model_trains_saves_its_head_and_reloads_with_the_same_scores(reward_run):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from tuner.data.pipeline import prepare
    from tuner.models.inputs import load_inputs

    tmp, cfg, result, _ = reward_run
    out = tmp / "out"
    steps = [m for m in read_metrics(out) if "loss" in m]
    evals = [m for m in read_metrics(out) if "eval_loss" in m]
    assert len(steps) == 4 and all(k in steps[0] for k in ("accuracy", "margin", "rewards/chosen", "rewards/rejected"))
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert "score" in adapter["modules_to_save"] and adapter["task_type"] == "SEQ_CLS"
    head = json.loads((out / "head_config.json").read_text())
    assert head["num_labels"] == 1 and head["pad_token_id"] is not None

    # plain transformers + peft, from the saved folder
    base = AutoModelForSequenceClassification.from_pretrained(cfg.model.base_model, num_labels=1,
                                                              pad_token_id=head["pad_token_id"], dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(base, str(out)).eval()
    data = prepare(cfg, load_inputs(cfg).tokenizer, [])
    rows = data.eval
    docs = list(rows["chosen_input_ids"]) + list(rows["rejected_input_ids"])
    plain = padded_scores(reloaded, docs, head["pad_token_id"])[:, 0]
    n = rows.num_rows
    chosen, rejected = plain[:n], plain[n:]
    final = evals[-1]
    assert final["eval_rewards/chosen"] == pytest.approx(float(chosen.mean()), abs=1e-4)
    assert final["eval_rewards/rejected"] == pytest.approx(float(rejected.mean()), abs=1e-4)
    assert final["eval_accuracy"] == pytest.approx(float((chosen > rejected).double().mean()), abs=1e-9)
    margin = chosen - rejected
    loss = torch.nn.functional.logsigmoid(margin).neg().mean() + 0.01 * ((chosen + rejected) ** 2).mean()
    assert final["eval_loss"] == pytest.approx(float(loss), abs=1e-4)
    assert float(margin.abs().max()) > 1e-3  # the head is not a constant


def run_cli(capsys, *argv: str) -> list[str]:
    """tuner's CLI in this process (a subprocess would import everything again: seconds)."""
    from tuner.cli import main

    capsys.readouterr()
    assert main(list(argv)) == 0, capsys.readouterr().err
    return capsys.readouterr().out.strip().splitlines()


def test_reward_score_cli_merge_and_info(reward_run, capsys):
    from transformers import AutoModelForSequenceClassification

    from tuner.export.merge import merge
    from tuner.models.heads import load_trained
    from tuner.plan import info_report

    tmp, cfg, _, values = reward_run
    out = tmp / "out"
    pairs = [json.loads(line) for line in PAIRS.read_text().splitlines()[:6]]
    rows = write_jsonl(tmp / "score.jsonl", pairs)
    config = write_config(tmp / "config.yml", **values)
    lines = run_cli(capsys, "score", str(config), "--input", str(rows))
    assert len(lines) == 7 and lines[-1].startswith("accuracy ") and "chosen" in lines[0]
    # one conversation per row: its reward, the same number as the chosen side of the pair it came from
    conversations = write_jsonl(tmp / "conversations.jsonl", [{"messages": [*p["messages"], p["chosen"]]} for p in pairs])
    single = run_cli(capsys, "score", str(config), "--input", str(conversations))
    assert [line.split("reward ")[1] for line in single] == [line.split("chosen ")[1].split()[0] for line in lines[:-1]]

    merged_dir = merge(out, tmp / "merged")
    merged = AutoModelForSequenceClassification.from_pretrained(str(merged_dir), dtype=torch.float32).eval()
    adapter, tokenizer = load_trained(out)
    docs = [tokenizer("Hello there, a conversation.")["input_ids"], tokenizer("Short.")["input_ids"]]
    a = padded_scores(merged, docs, merged.config.pad_token_id)
    b = padded_scores(adapter.eval(), docs, merged.config.pad_token_id)
    assert torch.allclose(a, b, atol=1e-4)
    rewards = [float(line.split("chosen ")[1].split()[0]) for line in lines[:-1]]
    assert len(set(rewards)) > 1

    report = info_report(cfg, device_memory=None)
    assert "LlamaForSequenceClassification" in report and "reward_model: true" in report
    assert "head             score: 64 parameters, trained (counted as trainable)" in report


def classification_rows(n: int, offset: int = 0) -> list[dict]:
    rows = []
    for i in range(offset, offset + n):
        label = ("good", "bad")[i % 2]
        rows.append({"sentence": f"item {i} was {WORDS[label][i % 5]}", "label": label})
    return rows


@pytest.mark.parametrize("adapter", [False, True], ids=["full", "lora"])
def test_classifier_trains_saves_labels_and_runs_in_the_pipeline(tmp_path, base, adapter):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    from tuner.export.merge import merge
    from tuner.models.heads import sequence_logits
    from tuner.train.loop import train

    data = write_jsonl(tmp_path / "texts.jsonl", classification_rows(40))
    values = common(tmp_path, base, "out", datasets=[{"path": str(data), "type": "classification",
                                                      "field_text": "sentence"}], **(LORA if adapter else {}))
    train(make_config(tmp_path, **values))
    out = tmp_path / "out"
    evals = [m for m in read_metrics(out) if "eval_loss" in m]
    assert {"eval_accuracy", "eval_f1/bad", "eval_f1/good", "eval_f1_macro"} <= evals[-1].keys()
    folder = merge(out, tmp_path / "merged") if adapter else out
    config = json.loads((folder / "config.json").read_text())
    assert config["id2label"] == {"0": "bad", "1": "good"} and config["architectures"] == ["LlamaForSequenceClassification"]

    classify = pipeline("text-classification", model=str(folder), top_k=None)
    texts = [r["sentence"] for r in classification_rows(4, offset=100)]
    predicted = classify(texts)
    model = AutoModelForSequenceClassification.from_pretrained(str(folder), dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    docs = [tokenizer(t)["input_ids"] for t in texts]
    packed = {"input_ids": torch.tensor([[t for d in docs for t in d]]),
              "position_ids": torch.tensor([[p for d in docs for p in range(len(d))]])}
    sequence = torch.tensor([[i for i, d in enumerate(docs) for _ in d]])
    with torch.no_grad():
        probs = sequence_logits(model, packed, sequence, len(docs)).softmax(-1)
    for row, p in zip(predicted, probs):
        by_label = {r["label"]: r["score"] for r in row}
        assert by_label["bad"] == pytest.approx(float(p[0]), abs=1e-4)
        assert by_label["good"] == pytest.approx(float(p[1]), abs=1e-4)


def test_classification_score_cli_and_integer_labels(tmp_path, base, capsys):
    from tuner.train.loop import train

    rows = [{"text": r["sentence"], "label": int(r["label"] == "good")} for r in classification_rows(24)]
    data = write_jsonl(tmp_path / "ints.jsonl", rows)
    values = common(tmp_path, base, "out", datasets=[{"path": str(data), "type": "classification"}], max_steps=2,
                    val_set_size=0, id2label={0: "negative", 1: "positive"})
    train(make_config(tmp_path, **values))
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["label2id"] == {"negative": 0, "positive": 1}
    probe = write_jsonl(tmp_path / "probe.jsonl", rows[:3])
    lines = run_cli(capsys, "score", str(write_config(tmp_path / "c.yml", **values)), "--input", str(probe))
    assert len(lines) == 4 and lines[-1].startswith("accuracy ") and "label positive" in lines[0] \
        and "label negative" in lines[1]


def test_bradley_terry_rows_train_a_reward_model(tmp_path, base):
    from tuner.train.loop import train

    rows = []
    for i in range(16):
        rows.append({"system": "Answer briefly.", "input": f"What is {i} plus 1?", "chosen": f"{i + 1}.",
                     "rejected": f"{i + 2}."})
    data = write_jsonl(tmp_path / "bt.jsonl", rows)
    values = common(tmp_path, base, "out", reward_model=True, max_steps=2, val_set_size=0,
                    datasets=[{"path": str(data), "type": "bradley_terry.chat_template"}])
    result = train(make_config(tmp_path, **values))
    assert result.steps == 2 and all(l == l for l in result.losses)  # noqa: E741 - finite, not NaN
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["id2label"] == {"0": "reward"} and saved["problem_type"] == "regression"
