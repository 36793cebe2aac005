"""Sequence-classification heads: where a sequence is read (its last non-pad token) with left
padding, right padding and padding-free packed rows, with no leakage between packed rows; the
config rules for reward_model / classification; label maps; the two dataset types."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import make_config, write_jsonl

PAD = 0


def tiny_classifier(num_labels: int = 3):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=64, pad_token_id=PAD, num_labels=num_labels,
                         attn_implementation="sdpa")
    return LlamaForSequenceClassification(config).eval()


SEQS = [[5, 9, 11, 3], [7, 8], [12, 13, 14, 15, 16, 17]]


def padded(seqs, left: bool):
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), PAD)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    sequence = torch.full((len(seqs), width), -1)
    for i, s in enumerate(seqs):
        at = slice(width - len(s), width) if left else slice(0, len(s))
        ids[i, at], mask[i, at], sequence[i, at] = torch.tensor(s), 1, i
    return {"input_ids": ids, "attention_mask": mask}, sequence


def packed(seqs, tail: int = 3):
    ids = [t for s in seqs for t in s] + [PAD] * tail
    positions = [p for s in seqs for p in range(len(s))] + list(range(tail))
    sequence = [i for i, s in enumerate(seqs) for _ in s] + [-1] * tail
    return {"input_ids": torch.tensor([ids]), "position_ids": torch.tensor([positions])}, torch.tensor([sequence])


def test_pooled_positions_are_the_last_non_pad_token_of_each_sequence():
    from tuner.models.heads import pooled_positions

    inputs, sequence = padded(SEQS, left=False)
    assert pooled_positions(inputs["input_ids"], sequence, 3, PAD).tolist() == [3, 6 + 1, 12 + 5]
    inputs, sequence = padded(SEQS, left=True)
    assert pooled_positions(inputs["input_ids"], sequence, 3, PAD).tolist() == [5, 11, 17]
    inputs, sequence = packed(SEQS)
    assert pooled_positions(inputs["input_ids"], sequence, 3, PAD).tolist() == [3, 5, 11]
    # a real pad token (pad = EOS) ending a sequence is skipped, as transformers' own rule does
    ids = torch.tensor([[5, 6, PAD, 7, PAD]])
    assert pooled_positions(ids, torch.tensor([[0, 0, 0, 1, 1]]), 2, PAD).tolist() == [1, 3]


def test_padded_left_right_and_packed_read_the_same_scores_as_transformers():
    from tuner.models.heads import sequence_logits

    model = tiny_classifier()
    with torch.no_grad():
        alone = torch.cat([model(input_ids=torch.tensor([s])).logits for s in SEQS])
        results = {}
        for name, (inputs, sequence) in {"right": padded(SEQS, False), "left": padded(SEQS, True),
                                         "packed": packed(SEQS)}.items():
            results[name] = sequence_logits(model, inputs, sequence, len(SEQS))
        hf_right = model(**padded(SEQS, False)[0]).logits
    for name, logits in results.items():
        assert torch.allclose(logits, alone, atol=1e-5), name
    assert torch.allclose(hf_right, alone, atol=1e-5)


def test_packed_rows_do_not_leak_into_each_other():
    from tuner.models.heads import sequence_logits

    model = tiny_classifier()
    changed = [[40, 41, 42, 43, 44, 45, 46, 47], *SEQS[1:]]
    with torch.no_grad():
        a = sequence_logits(model, *packed(SEQS), 3)
        b = sequence_logits(model, *packed(changed), 3)
    assert not torch.allclose(a[0], b[0])  # the changed sequence's own score moves
    assert torch.equal(a[1:], b[1:]) or torch.allclose(a[1:], b[1:], atol=1e-6)


def test_reward_loss_is_bradley_terry_with_trls_centering_term():
    import torch.nn.functional as F

    from tuner.train.objectives.reward import pair_sums

    c, r = torch.tensor([1.0, -0.5, 2.0]), torch.tensor([0.0, 0.5, 2.5])
    sums = pair_sums(c, r, None)
    assert float(sums["loss"]) == pytest.approx(float(-F.logsigmoid(c - r).sum()))
    assert float(sums["accuracy"]) == 1 and float(sums["margin"]) == pytest.approx(-0.5)
    centered = pair_sums(c, r, 0.01)
    assert float(centered["loss"]) == pytest.approx(float(-F.logsigmoid(c - r).sum() + 0.01 * ((c + r) ** 2).sum()))


def test_classification_metrics_accuracy_and_per_class_f1():
    from tuner.data.formats.classification import LabelMap
    from tuner.train.objectives.classification import Classification

    obj = Classification(None, LabelMap({0: "a", 1: "b", 2: "c"}))
    logits = torch.tensor([[3.0, 0, 0], [0, 3.0, 0], [3.0, 0, 0], [0, 0, 3.0]])
    targets = torch.tensor([0, 1, 1, 2])
    sums = {k: float(v) for k, v in obj.batch_sums(logits, targets).items()}
    out = obj.report(sums, {"texts": 4}, evaluation=True)
    assert out["accuracy"] == 0.75
    assert out["f1/a"] == pytest.approx(2 / 3) and out["f1/b"] == pytest.approx(2 / 3) and out["f1/c"] == 1.0
    assert out["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, targets)))


# --------------------------------------------------------------------------- config rules


def base_values(tmp_path, **extra):
    values = dict(base_model="x", learning_rate=1e-4, num_epochs=1, datasets=[{"path": "d.jsonl", "type": "classification"}])
    values.update(extra)
    return values


@pytest.mark.parametrize("extra, key, words", [
    ({"reward_model": True, "rl": "dpo", "datasets": [{"path": "d.jsonl", "type": "chat_template.default"}]},
     "reward_model", "set one of them"),
    ({"reward_model": True, "model_type": "LlamaForCausalLM",
      "datasets": [{"path": "d.jsonl", "type": "bradley_terry.chat_template"}]},
     "model_type", "Heads that fit: AutoModelForSequenceClassification"),
    ({"reward_model": True, "num_labels": 3, "datasets": [{"path": "d.jsonl", "type": "bradley_terry.chat_template"}]},
     "num_labels", "a reward model has one output"),
    ({"reward_model": True, "datasets": [{"path": "d.jsonl", "type": "alpaca"}]}, "datasets[0].type",
     "not a preference type"),
    ({"model_type": "LlamaForSequenceClassification", "datasets": [{"path": "d.jsonl", "type": "alpaca"}]},
     "datasets[0].type", "use type: classification"),
    ({"rl": "dpo", "model_type": "AutoModelForSequenceClassification",
      "datasets": [{"path": "d.jsonl", "type": "chat_template.default"}]}, "model_type", "Heads that fit: AutoModelForCausalLM"),
    ({"center_rewards_coefficient": 0.01}, "center_rewards_coefficient", "applies to reward models"),
    ({"id2label": {0: "a", 1: "b"}, "label2id": {"a": 1, "b": 0}}, "label2id", "not the inverse"),
    ({"id2label": {0: "a", 2: "b"}}, "id2label", "must be 0, 1"),
    ({"num_labels": 3, "id2label": {0: "a", 1: "b"}}, "num_labels", "names 2 classes"),
    ({"sample_packing": True}, "sample_packing", "not sequence classification"),
    ({"datasets": [{"path": "d.jsonl", "type": "classification", "field_messages": "m"}]}, "datasets[0].field_messages",
     "does not apply to type classification"),
    ({"datasets": [{"path": "d.jsonl", "type": "alpaca", "field_text": "t"}]}, "datasets[0].field_text",
     "applies to type classification only"),
    ({"model_type": "LlamaModel"}, "model_type", "AutoModel is the backbone alone"),
])
def test_head_keys_that_do_not_fit_are_refused_naming_the_key(tmp_path, extra, key, words):
    from tuner.config import ConfigError

    with pytest.raises(ConfigError) as info:
        make_config(tmp_path, **base_values(tmp_path, **extra))
    assert key in str(info.value) and words in str(info.value), str(info.value)


def test_objective_follows_the_keys(tmp_path):
    assert make_config(tmp_path, **base_values(tmp_path)).objective == "classification"
    reward = make_config(tmp_path, **base_values(tmp_path, reward_model=True, center_rewards_coefficient=0.01,
                                                 datasets=[{"path": "d.jsonl", "type": "bradley_terry.chat_template"}]))
    assert reward.objective == "reward" and reward.data.datasets[0].kind == "bradley_terry.chat_template"
    pairs = make_config(tmp_path, **base_values(tmp_path, reward_model=True,
                                                datasets=[{"path": "d.jsonl", "type": "chat_template.default"}]))
    assert pairs.objective == "reward"
    assert make_config(tmp_path, **base_values(tmp_path, datasets=[{"path": "d.jsonl", "type": "alpaca"}])).objective == "sft"


# --------------------------------------------------------------------------- labels


def test_label_maps_from_config_data_and_checkpoint(tmp_path):
    from tuner.data.formats.classification import label_map
    from tuner.errors import UserError

    m = make_config(tmp_path, **base_values(tmp_path)).model
    names = label_map(m, [json.dumps(v) for v in ("pos", "neg", "pos", "neutral")])
    assert names.id2label == {0: "neg", 1: "neutral", 2: "pos"} and names.target('"pos"') == 2
    ints = label_map(m, ["0", "2", "1"])
    assert ints.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"} and ints.target("2") == 2
    floats = label_map(m, ["0.5", "1.25"])
    assert floats.regression and floats.num_labels == 1 and floats.target("0.5") == 0.5
    given = make_config(tmp_path, **base_values(tmp_path, id2label={0: "bad", 1: "good"})).model
    assert label_map(given, ['"good"']).id2label == {0: "bad", 1: "good"}
    assert label_map(m, ['"yes"'], checkpoint={0: "no", 1: "yes"}).id2label == {0: "no", 1: "yes"}
    with pytest.raises(UserError, match="not one of the classes"):
        names.target('"other"')
    with pytest.raises(UserError, match="mix class names"):
        label_map(m, ['"a"', "1"])
    with pytest.raises(UserError, match="not a class id"):
        ints.target("7")


def test_classification_and_bradley_terry_rows_encode(tmp_path, smol_tokenizer):
    from tuner.data.formats import EncodeContext, FieldError, get_format

    cfg = make_config(tmp_path, **base_values(tmp_path, datasets=[{"path": "d.jsonl", "type": "classification",
                                                                    "field_text": "sentence"}]))
    ds = cfg.data.datasets[0]
    fmt = get_format(ds)
    rows = [{"sentence": "great film", "label": "pos"}, {"sentence": "", "label": "neg"}, {"sentence": "ok", "label": True}]
    out = fmt.encode_many(rows, ds, EncodeContext(smol_tokenizer))
    assert out[0] == (smol_tokenizer("great film")["input_ids"], '"pos"')
    assert isinstance(out[1], FieldError) and isinstance(out[2], FieldError) and "label" in str(out[2])

    rm = make_config(tmp_path, **base_values(tmp_path, reward_model=True,
                                             datasets=[{"path": "d.jsonl", "type": "bradley_terry.chat_template"}]))
    ds = rm.data.datasets[0]
    fmt = get_format(ds)
    template = smol_tokenizer.chat_template
    axolotl = {"system": "Be brief.", "input": "2+2?", "chosen": "4", "rejected": "5"}
    conversation = {"chosen": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                               {"role": "assistant", "content": "4"}],
                    "rejected": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                                 {"role": "assistant", "content": "5"}]}
    a, b = fmt.encode_many([axolotl, conversation], ds, EncodeContext(smol_tokenizer, template=template))
    assert a == b
    assert smol_tokenizer.decode(a.prompt + a.chosen).endswith("<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>")
    bad = dict(conversation, rejected=conversation["rejected"][1:])
    assert isinstance(fmt.encode_many([bad], ds, EncodeContext(smol_tokenizer, template=template))[0], FieldError)


def test_prepared_classification_rows(tmp_path, smol_tokenizer):
    from tuner.data.pipeline import prepare

    data = write_jsonl(tmp_path / "d.jsonl", [{"text": f"row {i}", "label": ["a", "b"][i % 2]} for i in range(6)]
                       + [{"text": "word " * 200, "label": "a"}])
    cfg = make_config(tmp_path, **base_values(tmp_path, datasets=[{"path": str(data), "type": "classification"}],
                                              sequence_len=32, dataset_prepared_path=str(tmp_path / "prep")))
    prepared = prepare(cfg, smol_tokenizer, [])
    assert prepared.train.num_rows == 6 and prepared.train["label"][:2] == ['"a"', '"b"']
    assert prepared.stats["sources"][0]["too_long"] == 1


def test_head_class_follows_model_type_objective_and_architectures(tmp_path):
    from types import SimpleNamespace

    from tuner.errors import UserError
    from tuner.models.heads import head_class

    m = make_config(tmp_path, **base_values(tmp_path)).model
    causal = SimpleNamespace(architectures=["LlamaForCausalLM"], model_type="llama")
    saved = SimpleNamespace(architectures=["LlamaForSequenceClassification"], model_type="llama")
    name, why = head_class(m, "classification", causal)
    assert name == "AutoModelForSequenceClassification" and "the score head is new" in why
    name, why = head_class(m, "reward", saved)
    assert name == "AutoModelForSequenceClassification" and "its trained head is loaded" in why
    assert head_class(m, "sft", causal)[0] == "AutoModelForCausalLM"
    with pytest.raises(UserError, match="sequence-classification head; supervised fine-tuning trains a causal-LM head"):
        head_class(m, "sft", saved)
    typed = make_config(tmp_path, **base_values(tmp_path, model_type="LlamaForSequenceClassification")).model
    assert head_class(typed, "classification", causal)[0] == "LlamaForSequenceClassification"
