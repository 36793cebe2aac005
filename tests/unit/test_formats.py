"""Every dataset type through the real pipeline: input_output, pre-tokenized, user-defined,
chat conversations, several datasets at once and an explicit test set."""

from __future__ import annotations


import pytest

from helpers import make_config, write_jsonl
from tuner.data.pipeline import prepare
from tuner.data.tokenize import IGNORE
from tuner.errors import UserError


def run(tmp_path, tok, tok_dir, datasets, **extra):
    cfg = make_config(
        tmp_path, base_model=str(tok_dir), datasets=datasets, dataset_prepared_path=str(tmp_path / "prepared"),
        learning_rate=1e-4, num_epochs=1, **extra,
    )
    return prepare(cfg, tok, [tok_dir / "tokenizer.json"])


def trained_text(tok, labels):
    return tok.decode([t for t in labels if t != IGNORE])


def test_input_output_segments_as_written(tmp_path, smol_tokenizer, smol_tokenizer_dir):
    rows = [{"segments": [{"text": "Q: 2+2?\n", "label": False}, {"text": "A: 4", "label": True},
                          {"text": "<|im_end|>", "label": True}]}]
    data = write_jsonl(tmp_path / "io.jsonl", rows)
    prepared = run(tmp_path, smol_tokenizer, smol_tokenizer_dir, [{"path": str(data), "type": "input_output"}])
    row = prepared.train[0]
    parts = [smol_tokenizer(t, add_special_tokens=False)["input_ids"] for t in ("Q: 2+2?\n", "A: 4", "<|im_end|>")]
    assert row["input_ids"] == parts[0] + parts[1] + parts[2]  # no EOS added, nothing else
    assert row["labels"] == [IGNORE] * len(parts[0]) + parts[1] + parts[2]


def test_pretokenized_rows_are_used_as_they_are(tmp_path, smol_tokenizer, smol_tokenizer_dir):
    rows = [{"input_ids": [5, 6, 7, 8], "labels": [-100, -100, 7, 8]}, {"input_ids": [9, 10, 11]}]
    data = write_jsonl(tmp_path / "tok.jsonl", rows)
    prepared = run(tmp_path, smol_tokenizer, smol_tokenizer_dir, [{"path": str(data)}])
    assert prepared.train["input_ids"] == [[5, 6, 7, 8], [9, 10, 11]]
    assert prepared.train["labels"] == [[-100, -100, 7, 8], [9, 10, 11]]


@pytest.mark.parametrize(
    "row, words",
    [
        ({"input_ids": [1, 2, 999999]}, "field 'input_ids' holds 999999, outside the vocabulary"),
        ({"input_ids": [1, 2], "labels": [1]}, "field 'labels' has 1 entries but input_ids has 2"),
        ({"input_ids": [1, 2], "attention_mask": [1, 0]}, "field 'attention_mask' marks padding"),
        ({"input_ids": "1 2 3"}, "field 'input_ids' must be a list of whole numbers"),
    ],
)
def test_pretokenized_validation(tmp_path, smol_tokenizer, smol_tokenizer_dir, row, words):
    data = write_jsonl(tmp_path / "tok.jsonl", [{"input_ids": [3, 4, 5]}, row])
    with pytest.raises(UserError) as info:
        run(tmp_path, smol_tokenizer, smol_tokenizer_dir, [{"path": str(data)}])
    assert f"datasets[0] ({data}), row 2: {words}" in str(info.value)


def test_user_defined_format(tmp_path, smol_tokenizer, smol_tokenizer_dir):
    rows = [{"question": "Capital of France?", "context": "", "answer": "Paris"},
            {"question": "Translate", "context": "chat", "answer": "cat"}]
    data = write_jsonl(tmp_path / "ud.jsonl", rows)
    fmt = {"field_instruction": "question", "field_input": "context", "field_output": "answer",
           "format": "<q>{instruction}\n{input}</q>\n", "no_input_format": "<q>{instruction}</q>\n",
           "system_prompt": "Be brief.", "system_format": "<sys>{system}</sys>\n"}
    prepared = run(tmp_path, smol_tokenizer, smol_tokenizer_dir, [{"path": str(data), "type": fmt}])
    first, second = prepared.train[0], prepared.train[1]
    assert smol_tokenizer.decode(first["input_ids"]) == "<sys>Be brief.</sys>\n<q>Capital of France?</q>\nParis<|im_end|>"
    assert smol_tokenizer.decode(second["input_ids"]) == "<sys>Be brief.</sys>\n<q>Translate\nchat</q>\ncat<|im_end|>"
    assert trained_text(smol_tokenizer, first["labels"]) == "Paris<|im_end|>"


def test_user_defined_format_placeholders_are_checked(tmp_path):
    from tuner.config import ConfigError

    with pytest.raises(ConfigError) as info:
        make_config(tmp_path, base_model="x", learning_rate=1e-4, num_epochs=1,
                    datasets=[{"path": "d.jsonl", "type": {"format": "{question} {input}"}}])
    assert "datasets[0].type.format" in str(info.value) and "allowed placeholders: {instruction}, {input}" in str(info.value)


def chat_rows():
    return [
        {"messages": [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello there."}]},
        {"messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "2+2?"},
                      {"role": "assistant", "content": "4"}, {"role": "user", "content": "3+3?"},
                      {"role": "assistant", "content": "6"}]},
    ]


def test_chat_dataset_through_the_pipeline(tmp_path, smol_tokenizer, smol_tokenizer_dir):
    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows())
    prepared = run(tmp_path, smol_tokenizer, smol_tokenizer_dir, [{"path": str(data), "type": "chat_template"}])
    assert [trained_text(smol_tokenizer, r) for r in prepared.train["labels"]] == [
        "Hello there.<|im_end|>", "4<|im_end|>6<|im_end|>"
    ]


def test_named_template_is_returned_and_in_the_fingerprint(tmp_path, smol_tokenizer, smol_tokenizer_dir):
    from tuner.data.templates import CHATML

    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows())
    ds = [{"path": str(data), "type": "chat_template"}]
    default = run(tmp_path, smol_tokenizer, smol_tokenizer_dir, ds)
    chatml = run(tmp_path, smol_tokenizer, smol_tokenizer_dir, ds, chat_template="chatml")
    assert default.chat_template == smol_tokenizer.chat_template and chatml.chat_template == CHATML
    assert chatml.fingerprint != default.fingerprint
    # chatml does not inject SmolLM2's default system prompt: the first row is shorter.
    assert len(chatml.train[0]["input_ids"]) < len(default.train[0]["input_ids"])


def test_empty_label_mask_is_dropped_and_counted(tmp_path, smol_tokenizer, smol_tokenizer_dir):
    rows = chat_rows() + [{"messages": [{"role": "user", "content": "Only a question?"}]}] * 2
    data = write_jsonl(tmp_path / "chat.jsonl", rows)
    prepared = run(tmp_path, smol_tokenizer, smol_tokenizer_dir, [{"path": str(data), "type": "chat_template"}])
    [stats] = prepared.stats["sources"]
    assert stats["nothing_to_train"] == 2 and stats["dropped_examples"]["nothing_to_train"] == [3, 4]
    assert "2 with nothing to train (rows 3, 4)" in prepared.summary()


@pytest.mark.parametrize(
    "bad, words",
    [
        ({"messages": [{"role": "wizard", "content": "x"}]}, "row 2: field 'messages[0].role' has unknown role 'wizard'"),
        ({"messages": []}, "row 2: field 'messages' is an empty conversation"),
        ({"text": "no messages"}, "row 2: field 'messages' is missing"),
    ],
)
def test_bad_chat_rows_name_dataset_file_row_field_and_leave_nothing(tmp_path, smol_tokenizer, smol_tokenizer_dir, bad, words):
    data = write_jsonl(tmp_path / "chat.jsonl", [chat_rows()[0], bad])
    with pytest.raises(UserError) as info:
        run(tmp_path, smol_tokenizer, smol_tokenizer_dir, [{"path": str(data), "type": "chat_template"}])
    assert f"datasets[0] ({data}), {words}" in str(info.value)
    assert not (tmp_path / "prepared").exists() or not [p for p in (tmp_path / "prepared").iterdir() if p.name != ".locks"]


def test_template_that_cannot_render_is_a_row_error(tmp_path, smol_tokenizer, smol_tokenizer_dir):
    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows())
    with pytest.raises(UserError) as info:
        run(tmp_path, smol_tokenizer, smol_tokenizer_dir, [{"path": str(data), "type": "chat_template"}],
            chat_template_jinja="{{ raise_exception('no system messages here') }}")
    assert "row 1: field 'messages' cannot be rendered by the chat template: no system messages here" in str(info.value)


def test_several_datasets_and_an_explicit_test_set(tmp_path, smol_tokenizer, smol_tokenizer_dir):
    chat = write_jsonl(tmp_path / "chat.jsonl", chat_rows())
    alpaca = write_jsonl(tmp_path / "alpaca.jsonl", [{"instruction": "Say hi", "input": "", "output": "hi"}] * 3)
    test = write_jsonl(tmp_path / "test.jsonl", [{"instruction": "Say bye", "input": "", "output": "bye"}])
    prepared = run(
        tmp_path, smol_tokenizer, smol_tokenizer_dir,
        [{"path": str(chat), "type": "chat_template"}, {"path": str(alpaca), "type": "alpaca"}],
        test_datasets=[{"path": str(test), "type": "alpaca"}],
    )
    assert prepared.train.num_rows == 5 and prepared.eval.num_rows == 1
    assert [s["where"].split(" ")[0] for s in prepared.stats["sources"]] == ["datasets[0]", "datasets[1]"]
    assert prepared.eval_stats["sources"][0]["where"].startswith("test_datasets[0]")
    assert trained_text(smol_tokenizer, prepared.eval[0]["labels"]) == "bye<|im_end|>"


def test_chat_keys_on_other_types_are_refused(tmp_path):
    from tuner.config import ConfigError

    with pytest.raises(ConfigError) as info:
        make_config(tmp_path, base_model="x", learning_rate=1e-4, num_epochs=1,
                    datasets=[{"path": "d.jsonl", "type": "alpaca", "roles_to_train": ["user"]}])
    assert "datasets[0].roles_to_train" in str(info.value) and "chat_template only" in str(info.value)


def test_generate_prompt_is_the_training_prompt(tmp_path):
    """`tuner generate --prompt I --input X` builds exactly the prompt an alpaca row {I, X}
    trained on; a type without an input field refuses --input."""
    from tuner.data.formats import alpaca
    from tuner.infer.generate import training_prompt

    cfg = make_config(tmp_path, base_model="x", datasets=[{"path": "d.jsonl", "type": "alpaca"}],
                      learning_rate=1e-4, num_epochs=1)
    row = {"instruction": "Convert the date.", "input": "March 5th 2021"}
    assert training_prompt(cfg, row["instruction"], row["input"]) == alpaca.prompt(row)
    assert "### Input:" not in training_prompt(cfg, row["instruction"])
    cfg = make_config(tmp_path, base_model="x", datasets=[{"path": "d.jsonl", "type": "completion"}],
                      learning_rate=1e-4, num_epochs=1)
    assert training_prompt(cfg, "Once upon") == "Once upon"
    with pytest.raises(UserError, match="no input field"):
        training_prompt(cfg, "Once upon", "a time")


# --------------------------------------------------------------------------- the registry


def test_every_declared_type_has_a_format_and_every_format_is_declared():
    """config declares the names (it may not import data); the registry implements exactly them."""
    from tuner.config.dataset_types import DATASET_TYPES, KINDS
    from tuner.data.formats import FORMATS, DatasetFormat, register

    assert set(FORMATS) == set(KINDS) and set(DATASET_TYPES) < set(FORMATS)
    assert all(isinstance(f, DatasetFormat) and f.name == name for name, f in FORMATS.items())

    class Undeclared(DatasetFormat):
        name = "not_declared"
        field_names = check = encode_many = lambda *a: None

    with pytest.raises(RuntimeError, match="not declared in tuner.config.dataset_types"):
        register(Undeclared())


def test_trained_count_is_one_rule_for_rows_batches_and_arrays():
    import numpy as np
    import torch

    from tuner.data.labels import IGNORE as IGN
    from tuner.data.labels import trained_count

    row = [5, 6, IGN, 8]  # the first position never counts
    assert trained_count(row) == 2 and trained_count([row, [IGN, 3]]) == 3 and trained_count([]) == 0
    assert trained_count(np.array(row)) == 2 and trained_count(torch.tensor([row, [IGN, 1, 2, IGN]])) == 4


# --------------------------------------------------------------------------- Axolotl's types and spellings


def sharegpt_rows():
    return [{"conversations": [{"from": "human", "value": "Hi!"}, {"from": "gpt", "value": "Hello there."}]},
            {"conversations": [{"from": "system", "value": "Be terse."}, {"from": "human", "value": "2+2?"},
                               {"from": "gpt", "value": "4"}]}]


@pytest.mark.parametrize("legacy", [
    {"type": "sharegpt", "conversation": "chatml"},
    {"type": "sharegpt:chat", "conversation": "chatml"},
    {"type": "chat_template", "field_messages": "conversations", "message_field_role": "from",
     "message_field_content": "value", "chat_template": "chatml"},
])
def test_legacy_sharegpt_spellings_train_as_chat_template(tmp_path, smol_tokenizer, smol_tokenizer_dir, legacy):
    from tuner.data.templates import CHATML

    data = write_jsonl(tmp_path / "sharegpt.jsonl", sharegpt_rows())
    cfg = make_config(tmp_path, base_model=str(smol_tokenizer_dir), datasets=[{"path": str(data), **legacy}],
                      dataset_prepared_path=str(tmp_path / "prepared"), learning_rate=1e-4, num_epochs=1)
    ds = cfg.data.datasets[0]
    assert (ds.kind, ds.field_messages, ds.message_property_mappings, ds.chat_template) == (
        "chat_template", "conversations", {"role": "from", "content": "value"}, "chatml")
    renamed = [n for n in cfg.notices if n.kind == "renamed" and n.key.startswith("datasets[0]")]
    assert renamed and all("write that instead" in n.message for n in renamed)
    prepared = prepare(cfg, smol_tokenizer, [smol_tokenizer_dir / "tokenizer.json"])
    assert prepared.chat_template == CHATML  # rendered with chatml, not SmolLM2's own template
    assert smol_tokenizer.decode(prepared.train[0]["input_ids"]).startswith("<|im_start|>user\nHi!")
    assert [trained_text(smol_tokenizer, r) for r in prepared.train["labels"]] == ["Hello there.<|im_end|>", "4<|im_end|>"]


def test_a_dataset_may_name_its_own_template(tmp_path, smol_tokenizer, smol_tokenizer_dir):
    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows())
    prepared = run(tmp_path, smol_tokenizer, smol_tokenizer_dir,
                   [{"path": str(data), "type": "chat_template", "chat_template": "llama3"},
                    {"path": str(data), "type": "chat_template"}])
    first, second = (smol_tokenizer.decode(prepared.train[i]["input_ids"]) for i in (0, 2))
    assert "<|start_header_id|>user<|end_header_id|>" in first and first.startswith("<|im_start|>")  # llama3 with this BOS
    assert "You are a helpful AI assistant named SmolLM" in second  # the tokenizer's own
    assert prepared.chat_template == smol_tokenizer.chat_template  # the top-level one goes with the model


def test_axolotl_instruction_type_through_the_pipeline_and_generate(tmp_path, smol_tokenizer, smol_tokenizer_dir):
    from tuner.infer.generate import training_prompt

    rows = [{"question": "Capital of France?", "category": "GEOGRAPHY", "answer": "Paris"}]
    data = write_jsonl(tmp_path / "jeopardy.jsonl", rows)
    prepared = run(tmp_path, smol_tokenizer, smol_tokenizer_dir, [{"path": str(data), "type": "jeopardy:chat"}])
    text = smol_tokenizer.decode(prepared.train[0]["input_ids"])
    assert text.startswith("SYSTEM: Below is an instruction that describes a task, paired with an input")
    assert "USER: Capital of France?\nGEOGRAPHY\nASSISTANT:what is Paris<|im_end|>" in text
    assert trained_text(smol_tokenizer, prepared.train[0]["labels"]) == "what is Paris<|im_end|>"
    cfg = make_config(tmp_path, base_model="x", datasets=[{"path": "d.jsonl", "type": "alpaca:chatml"}],
                      learning_rate=1e-4, num_epochs=1)
    assert training_prompt(cfg, "Hi", "there") == (
        "<|im_start|>system\nBelow is an instruction that describes a task, paired with an input that provides further "
        "context. Write a response that appropriately completes the request.<|im_end|>\n"
        "<|im_start|>user\nHi\nthere<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("entry, key, words", [
    ({"type": "bradley_terry.chat_template"}, "type", "is a reward-model dataset type: it needs `reward_model: true`"),
    ({"type": "chat_template.default"}, "type", "is a preference dataset type: it needs `rl:`"),
    ({"type": "stepwise_supervised"}, "type", "process-reward-model training"),
    ({"type": "sharegpt", "conversation": "alpaca_v9"}, "conversation", "expected one of chatml, llama-2"),
    ({"type": "chat_template", "message_field_role": "from", "message_property_mappings": {"role": "speaker"}},
     "message_field_role", "keep message_property_mappings"),
    ({"type": "chat_template", "chat_template": "llava"}, "chat_template", "multimodal template"),
    ({"type": "alpaca", "drop_system_message": True}, "drop_system_message", "chat_template only"),
])
def test_axolotl_types_and_keys_tuner_cannot_honour_are_refused_with_why(tmp_path, entry, key, words):
    from tuner.config import ConfigError

    with pytest.raises(ConfigError) as info:
        make_config(tmp_path, base_model="x", learning_rate=1e-4, num_epochs=1, datasets=[{"path": "d.jsonl", **entry}])
    assert f"datasets[0].{key}" in str(info.value) and words in str(info.value)


def test_named_template_typo_lists_the_names(tmp_path):
    from tuner.config import ConfigError

    with pytest.raises(ConfigError) as info:
        make_config(tmp_path, base_model="x", learning_rate=1e-4, num_epochs=1, chat_template="gemma_3",
                    datasets=[{"path": "d.jsonl", "type": "chat_template"}])
    assert "chat_template" in str(info.value) and "gemma3" in str(info.value) and "Did you mean" in str(info.value)
