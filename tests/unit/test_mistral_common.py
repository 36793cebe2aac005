"""`tokenizer_use_mistral_common: true` (tuner.data.mistral_common), offline with the tokenizer files
the mistral-common wheel ships (tekken_240911.json and the sentencepiece v1/v2/v3/v7 models).

The proof of the labels: the input ids are what mistral-common's own request encoder gives for the
conversation (a MistralTokenizer loaded separately, in finetuning mode, typed messages), and the
trained tokens are, run by run, exactly what mistral-common encodes for each assistant turn
(`encode_assistant_message`: its content and the EOS); every other token is -100.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("mistral_common", reason="the mistral extra (pip install 'tuner[mistral]') is part of dev")

import mistral_common  # noqa: E402
from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage  # noqa: E402
from mistral_common.protocol.instruct.request import ChatCompletionRequest  # noqa: E402
from mistral_common.protocol.instruct.validator import ValidationMode  # noqa: E402
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer  # noqa: E402

from tuner.config import ConfigError  # noqa: E402
from tuner.config.load import parse_yaml, validate_raw  # noqa: E402
from tuner.config.schema import DatasetConfig  # noqa: E402
from tuner.data import mistral_common as mc  # noqa: E402
from tuner.data.formats import EncodeContext, FieldError, get_format  # noqa: E402
from tuner.data.tokenize import IGNORE  # noqa: E402
from tuner.errors import UserError  # noqa: E402

WHEEL = Path(mistral_common.__file__).parent / "data"
SPM = {"v1": "tokenizer.model.v1", "v2": "mistral_instruct_tokenizer_240216.model.v2",
       "v3": "mistral_instruct_tokenizer_240323.model.v3", "v7": "mistral_instruct_tokenizer_241114.model.v7"}
TEKKEN = "tekken_240911.json"  # a v3 Tekken tokenizer (Mistral Nemo / Pixtral's)

CONVERSATIONS = [
    [("user", "What is the capital of France?"), ("assistant", "Paris.")],
    [("system", "Answer briefly."), ("user", "Hi there"), ("assistant", "Hello! How can I help?"),
     ("user", "What is 2+2?"), ("assistant", "4, of course.  ")],
    [("user", "One"), ("assistant", "Uno"), ("user", "Two"), ("assistant", "Dos"), ("user", "Three"),
     ("assistant", "Tres\nand more: {json} 日本語 🙂")],
]


@pytest.fixture(scope="module")
def tokenizers():
    """name -> (tuner's tokenizer via mc.load, an independent reference MistralTokenizer in finetuning mode)."""
    out = {}
    for name, file in {**SPM, "tekken": TEKKEN}.items():
        out[name] = (mc.load(WHEEL / file), MistralTokenizer.from_file(str(WHEEL / file), mode=ValidationMode.finetuning))
    return out


def rows(conv):
    return {"messages": [{"role": r, "content": c} for r, c in conv]}


def reference_ids(ref, conv):
    typed = {"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage}
    return ref.encode_chat_completion(ChatCompletionRequest(messages=[typed[r](content=c) for r, c in conv])).tokens


def runs(labels):
    """Maximal runs of trained tokens, in order."""
    out, cur = [], []
    for label in labels:
        if label != IGNORE:
            cur.append(label)
        elif cur:
            out.append(cur)
            cur = []
    return out + ([cur] if cur else [])


def encode(tok, row, train_on_inputs=False, **ds_keys):
    ds = DatasetConfig(path="x", type=ds_keys.pop("type", "chat_template"), **ds_keys)
    return get_format(ds).encode_many([row], ds, EncodeContext(tok, train_on_inputs))[0]


@pytest.mark.parametrize("conv", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("name", [*SPM, "tekken"])
def test_assistant_tokens_are_exactly_what_mistral_common_encodes(tokenizers, name, conv):
    tok, ref = tokenizers[name]
    messages = CONVERSATIONS[conv]
    result = encode(tok, rows(messages))
    assert not isinstance(result, FieldError), result
    ids, labels = result
    assert ids == reference_ids(ref, messages)  # mistral-common's request encoder, untouched
    expected = [ref.instruct_tokenizer.encode_assistant_message(AssistantMessage(content=c), False)
                for r, c in messages if r == "assistant"]
    assert runs(labels) == expected  # each assistant turn: its content and EOS, nothing else
    assert all(label in (IGNORE, i) for label, i in zip(labels, ids))
    assert sum(label != IGNORE for label in labels) == sum(map(len, expected))
    assert ids[0] == tok.bos_token_id and labels[0] == IGNORE


def test_end_of_turn_and_role_options(tokenizers):
    tok, ref = tokenizers["v7"]
    messages = CONVERSATIONS[2]
    eos = tok.eos_token_id
    assistant = [ref.instruct_tokenizer.encode_assistant_message(AssistantMessage(content=c), False)
                 for r, c in messages if r == "assistant"]
    _, none = encode(tok, rows(messages), train_on_eos="none")
    assert runs(none) == [a[:-1] for a in assistant]
    _, last = encode(tok, rows(messages), train_on_eos="last")
    assert runs(last) == [a[:-1] for a in assistant[:-1]] + [assistant[-1]]
    row = rows(messages)
    row["messages"][1]["training"] = False  # per-message override: the first answer is not trained
    _, overridden = encode(tok, row)
    assert runs(overridden) == assistant[1:]
    _, with_all = encode(tok, row, train_on_eos="all")  # its EOS still trains under `all`
    assert runs(with_all) == [[eos], *assistant[1:]]
    ids, users = encode(tok, rows(messages), roles_to_train=["user"], train_on_eos="none")
    texts = [tok.decode(r) for r in runs(users)]  # each user turn's tokens ([INST] ... [/INST]), no answer
    assert texts == ["[INST]▁One[/INST]", "[INST]▁Two[/INST]", "[INST]▁Three[/INST]"], texts
    ids, everything = encode(tok, rows(messages), train_on_inputs=True)
    assert everything == ids


def test_sharegpt_fields_and_row_system(tokenizers):
    tok, ref = tokenizers["v7"]
    row = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}], "system": "Be kind."}
    result = encode(tok, row, field_messages="conversations", message_property_mappings={"role": "from", "content": "value"})
    ids, labels = result
    assert ids == reference_ids(ref, [("system", "Be kind."), ("user", "Hi"), ("assistant", "Hello")])
    assert runs(labels) == [ref.instruct_tokenizer.encode_assistant_message(AssistantMessage(content="Hello"), False)]


@pytest.mark.parametrize(("row", "words"), [
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}, {"role": "user", "content": "?"}]},
     "mistral-common cannot encode it"),  # a conversation must end with an assistant turn to be trained
    ({"messages": [{"role": "assistant", "content": "I start"}]}, "mistral-common cannot encode it"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey", "reasoning_content": "hmm"}]},
     "mistral-common cannot encode it"),  # reasoning needs a tokenizer with think chunks (v13)
])
def test_conversations_mistral_common_refuses_are_row_errors(tokenizers, row, words):
    tok, _ = tokenizers["v7"]
    result = encode(tok, row)
    assert isinstance(result, FieldError) and words in str(result) and result.field.startswith("messages"), result


def test_alpaca_uses_the_plain_encode(tokenizers):
    tok, ref = tokenizers["tekken"]
    raw = ref.instruct_tokenizer.tokenizer
    row = {"instruction": "Name a colour.", "input": "", "output": "Blue."}
    ids, labels = encode(tok, row, type="alpaca")
    fmt = get_format(DatasetConfig(path="x", type="alpaca"))
    prompt, answer = [seg.text for seg in fmt.segments(row, DatasetConfig(path="x", type="alpaca"))]
    expected_prompt = raw.encode(prompt, bos=True, eos=False)
    expected_answer = raw.encode(answer, bos=False, eos=False) + [raw.eos_id]
    assert ids == expected_prompt + expected_answer
    assert labels == [IGNORE] * len(expected_prompt) + expected_answer


def test_loading_from_a_model_folder(tmp_path, tokenizers):
    from tuner.config.schema import ModelBlock
    from tuner.models.load import BaseModelSource, load_tokenizer_and_new_ids, tokenizer_files

    (tmp_path / "tokenizer.model.v7").symlink_to(WHEEL / SPM["v7"])
    (tmp_path / "config.json").write_text("{}")
    model = ModelBlock(base_model=str(tmp_path), tokenizer_use_mistral_common=True)
    base = BaseModelSource(tmp_path, str(tmp_path), "folder")
    tok, new = load_tokenizer_and_new_ids(model, base)
    assert mc.is_mistral(tok) and new == [] and tok.pad_token_id is not None
    assert tokenizer_files(model, base) == [tmp_path / "tokenizer.model.v7"]  # what the data fingerprint hashes
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "tokenizer.json").write_text("{}")
    with pytest.raises(UserError, match=r"no mistral-common tokenizer file .*it has: tokenizer.json"):
        mc.load(empty)


def test_a_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(mc.importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(UserError, match=r"pip install 'tuner\[mistral\]'"):
        mc.load(WHEEL / SPM["v7"])


# --------------------------------------------------------------------------- config

BASE = """\
base_model: ./no-such-model
tokenizer_use_mistral_common: true
datasets:
  - path: data.jsonl
    type: chat_template
learning_rate: 2.0e-4
num_epochs: 1
"""


def validate(extra: str = "", base: str = BASE):
    return validate_raw(parse_yaml(base + extra, "c.yml"))


def refused(extra: str, base: str = BASE) -> str:
    with pytest.raises(ConfigError) as info:
        validate(extra, base)
    return "\n".join(info.value.lines)


def test_the_key_validates_and_reaches_the_model_block():
    cfg = validate("chat_template: tokenizer_default\n")
    assert cfg.model.tokenizer_use_mistral_common is True


@pytest.mark.parametrize(("extra", "key", "words"), [
    ("chat_template: chatml\n", "chat_template", "encodes conversations itself"),
    ("chat_template_jinja: '{{ messages }}'\n", "chat_template_jinja", "encodes conversations itself"),
    ("special_tokens:\n  pad_token: <pad2>\n", "special_tokens", "cannot add tokens"),
    ("tokens: [<x>]\n", "tokens", "cannot add tokens"),
    ("tokenizer_type: LlamaTokenizer\n", "tokenizer_type", "not a transformers class"),
])
def test_what_mistral_common_cannot_do_is_refused(extra, key, words):
    text = refused(extra)
    assert key in text and words in text, text


def test_dataset_templates_and_other_chat_types_are_refused():
    base = BASE.replace("    type: chat_template\n", "    type: chat_template\n    chat_template: llama3\n")
    text = refused("", base)
    assert text.startswith("datasets[0].chat_template (line 6): 'llama3'") and "encodes conversations itself" in text
    pairs = BASE.replace("type: chat_template", "type: bradley_terry.chat_template") + "reward_model: true\n"
    assert "not supported yet" in refused("", pairs)
    eot = BASE.replace("    type: chat_template\n", "    type: chat_template\n    train_on_eot: all\n")
    assert "train_on_eos" in refused("", eot)


def test_eot_tokens_are_reported_as_not_applied():
    cfg = validate("eot_tokens: [<end_of_turn>]\n")
    assert any(n.kind == "not applied" and "EOS" in str(n) for n in cfg.notices), cfg.notices
    assert not cfg.data.eot_tokens


def test_axolotl_multi_content_messages(tokenizers):
    """Axolotl's thinking examples write content as chunks: a text chunk alone reads as the string; a
    thinking chunk goes to mistral-common as one (which this v7 tokenizer cannot encode: a named row error)."""
    tok, ref = tokenizers["v7"]
    plain = rows(CONVERSATIONS[0])
    chunked = {"messages": [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]}
                            for m in plain["messages"]]}
    assert encode(tok, chunked) == encode(tok, plain)
    thinking = {"messages": [chunked["messages"][0], {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "Capital cities..."}, {"type": "text", "text": "Paris."}]}]}
    result = encode(tok, thinking)
    assert isinstance(result, FieldError) and "mistral-common cannot encode it" in str(result) and "ThinkChunk" in str(result)
    odd = {"messages": [chunked["messages"][0], {"role": "assistant", "content": [{"type": "image", "url": "x"}]}]}
    result = encode(tok, odd)
    assert isinstance(result, FieldError) and result.field == "messages[1].content" and "image" in str(result)


def test_the_hugging_face_tokenizer_stays_unless_asked(tmp_path, smol_tokenizer_dir):
    """With mistral-common installed, transformers' AutoTokenizer picks it by itself for a Mistral folder
    holding a tekken.json; tuner loads the folder's Hugging Face tokenizer unless the key is true."""
    import shutil

    from transformers import AutoTokenizer

    from tuner.config.schema import ModelBlock
    from tuner.models.load import BaseModelSource, load_tokenizer_and_new_ids, tokenizer_files

    folder = tmp_path / "model"
    shutil.copytree(smol_tokenizer_dir, folder)
    (folder / "tekken.json").symlink_to(WHEEL / TEKKEN)
    (folder / "config.json").write_text('{"model_type": "mistral"}')
    assert mc.is_mistral(AutoTokenizer.from_pretrained(str(folder)))  # transformers' own choice
    base = BaseModelSource(folder, str(folder), "folder")
    hf, _ = load_tokenizer_and_new_ids(ModelBlock(base_model=str(folder)), base)
    assert not mc.is_mistral(hf) and hf("Hello")["input_ids"] == AutoTokenizer.from_pretrained(
        str(smol_tokenizer_dir))("Hello")["input_ids"]
    assert (folder / "tekken.json") not in tokenizer_files(ModelBlock(base_model=str(folder)), base)
    asked = ModelBlock(base_model=str(folder), tokenizer_use_mistral_common=True)
    assert tokenizer_files(asked, base) == [folder / "tekken.json"]


def test_validate_warns_when_the_package_is_missing(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mistral_common" else real(name, *a))
    cfg = validate()
    [warning] = [str(n) for n in cfg.notices if "mistral-common" in str(n)]
    assert warning.startswith("tokenizer_use_mistral_common (line 2): ") and "pip install 'tuner[mistral]'" in warning


def test_tokenizer_config_may_name_the_file(tmp_path):
    from tuner.config.schema import ModelBlock
    from tuner.models.load import BaseModelSource, load_tokenizer_and_new_ids, tokenizer_files

    file = WHEEL / SPM["v3"]
    model = ModelBlock(base_model=str(tmp_path), tokenizer_config=str(file), tokenizer_use_mistral_common=True)
    base = BaseModelSource(tmp_path, str(tmp_path), "folder")
    tok, _ = load_tokenizer_and_new_ids(model, base)
    assert mc.version(tok) == "v3" and tokenizer_files(model, base) == [file]
