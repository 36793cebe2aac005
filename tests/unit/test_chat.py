"""chat_template labels: exact, under two real templates, for every train_on_eos value and
several roles_to_train; plus ShareGPT mapping, overrides, markers and bad conversations."""

from __future__ import annotations

import itertools

import pytest

from tuner.config.schema import DatasetConfig
from tuner.data.formats import FieldError
from tuner.data.formats import chat_template as ct
from tuner.data.tokenize import IGNORE

# A Llama-3-style template (header tokens written as text, the tokenizer's EOS ends a turn).
LLAMA3_STYLE = (
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] + eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

CONVERSATION = [
    {"role": "system", "content": "You answer with one short sentence."},
    {"role": "user", "content": "What colour is the sky?"},
    {"role": "assistant", "content": "It is blue on a clear day."},
    {"role": "user", "content": "And at night?"},
    {"role": "assistant", "content": "Mostly black, with stars."},
]


def pieces(template: str, messages: list[dict], eos: str) -> list[tuple[str, str, int | None]]:
    """The rendering as (kind, text, message index) pieces: 'scaffold', 'content' or 'end'."""
    out = []
    for i, m in enumerate(messages):
        if template == "chatml":
            out += [("scaffold", f"<|im_start|>{m['role']}\n", None), ("content", m["content"], i), ("end", "<|im_end|>", i), ("scaffold", "\n", None)]
        else:
            out += [("scaffold", f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n", None), ("content", m["content"], i), ("end", eos, i)]
    return out


def oracle(tok, template, messages, roles_to_train, train_on_eos):
    """Expected ids and labels: the pieces' character ranges are known by construction (not
    searched for), and a token trains when it overlaps a trained piece."""
    trained = [m["role"] in roles_to_train for m in messages]
    last = max((i for i, t in enumerate(trained) if t), default=None)
    text, ranges = "", []
    for kind, piece, i in pieces(template, messages, tok.eos_token):
        if kind == "content":
            on = trained[i]
        elif kind == "end":
            on = {"turn": trained[i], "all": True, "last": i == last, "none": False}[train_on_eos]
        else:
            on = False
        if on:
            ranges.append((len(text), len(text) + len(piece)))
        text += piece
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = [t if any(s < e2 and e > s2 for s2, e2 in ranges) else IGNORE
              for t, (s, e) in zip(enc["input_ids"], enc["offset_mapping"])]
    return enc["input_ids"], labels, text


def expected_text(tok, template, messages, roles_to_train, train_on_eos):
    trained = [m["role"] in roles_to_train for m in messages]
    last = max((i for i, t in enumerate(trained) if t), default=None)
    end = "<|im_end|>" if template == "chatml" else tok.eos_token
    text = ""
    for i, m in enumerate(messages):
        if trained[i]:
            text += m["content"]
        if {"turn": trained[i], "all": True, "last": i == last, "none": False}[train_on_eos]:
            text += end
    return text


ROLE_SETS = [["assistant"], ["assistant", "user"], ["system", "assistant"], ["user"], ["system", "user", "assistant"]]


@pytest.mark.parametrize(
    "template, train_on_eos, roles",
    list(itertools.product(["chatml", "llama3_style"], ["turn", "all", "last", "none"], ROLE_SETS)),
)
def test_exact_labels(smol_tokenizer, template, train_on_eos, roles):
    tok = smol_tokenizer
    jinja = tok.chat_template if template == "chatml" else LLAMA3_STYLE  # chatml: SmolLM2's own template
    ds = DatasetConfig(path="x", type="chat_template", train_on_eos=train_on_eos, roles_to_train=roles)
    ids, labels = ct.encode({"messages": CONVERSATION}, ds, tok, jinja, train_on_inputs=False)
    want_ids, want_labels, want_text = oracle(tok, template, CONVERSATION, roles, train_on_eos)
    assert tok.decode(ids) == want_text  # the test's picture of the template is right
    assert ids == want_ids
    assert labels == want_labels
    trained_text = tok.decode([t for t in labels if t != IGNORE])
    assert trained_text == expected_text(tok, template, CONVERSATION, roles, train_on_eos)


def test_every_assistant_turn_is_trained(smol_tokenizer):
    ds = DatasetConfig(path="x", type="chat_template")
    _, labels = ct.encode({"messages": CONVERSATION}, ds, smol_tokenizer, smol_tokenizer.chat_template, False)
    text = smol_tokenizer.decode([t for t in labels if t != IGNORE])
    assert text == "It is blue on a clear day.<|im_end|>Mostly black, with stars.<|im_end|>"


def test_injected_default_system_prompt_is_not_trained(smol_tokenizer):
    """SmolLM2's template adds its own system prompt when the data has none: never trained."""
    ds = DatasetConfig(path="x", type="chat_template", roles_to_train=["system", "assistant"])
    ids, labels = ct.encode({"messages": CONVERSATION[1:3]}, ds, smol_tokenizer, smol_tokenizer.chat_template, False)
    assert "You are a helpful AI assistant named SmolLM" in smol_tokenizer.decode(ids)
    assert smol_tokenizer.decode([t for t in labels if t != IGNORE]) == "It is blue on a clear day.<|im_end|>"


def test_train_on_inputs_trains_everything(smol_tokenizer):
    ds = DatasetConfig(path="x", type="chat_template")
    ids, labels = ct.encode({"messages": CONVERSATION}, ds, smol_tokenizer, smol_tokenizer.chat_template, True)
    assert labels == ids


def test_sharegpt_mapping(smol_tokenizer):
    row = {"conversations": [{"from": "human", "value": "Hi there"}, {"from": "gpt", "value": "Hello! How can I help?"}]}
    ds = DatasetConfig(path="x", type="chat_template", field_messages="conversations",
                       message_property_mappings={"role": "from", "content": "value"})
    _, labels = ct.encode(row, ds, smol_tokenizer, smol_tokenizer.chat_template, False)
    assert smol_tokenizer.decode([t for t in labels if t != IGNORE]) == "Hello! How can I help?<|im_end|>"
    custom = DatasetConfig(path="x", type="chat_template", field_messages="conversations",
                           message_property_mappings={"role": "from", "content": "value"},
                           roles={"user": ["human"], "assistant": ["gpt"]})
    assert ct.encode(row, custom, smol_tokenizer, smol_tokenizer.chat_template, False)[1] == labels


def test_per_message_training_override(smol_tokenizer):
    messages = [dict(m) for m in CONVERSATION]
    messages[2]["training"] = False  # first assistant answer not trained
    messages[3]["training"] = True  # second user turn trained
    ds = DatasetConfig(path="x", type="chat_template")
    _, labels = ct.encode({"messages": messages}, ds, smol_tokenizer, smol_tokenizer.chat_template, False)
    assert smol_tokenizer.decode([t for t in labels if t != IGNORE]) == (
        "And at night?<|im_end|>Mostly black, with stars.<|im_end|>"
    )


def test_short_content_inside_another_message_is_not_ambiguous(smol_tokenizer):
    row = {"messages": [{"role": "user", "content": "Yes or no?"}, {"role": "assistant", "content": "Yes"}]}
    ds = DatasetConfig(path="x", type="chat_template")
    _, labels = ct.encode(row, ds, smol_tokenizer, smol_tokenizer.chat_template, False)
    assert smol_tokenizer.decode([t for t in labels if t != IGNORE]) == "Yes<|im_end|>"


def test_generation_markers_decide(smol_tokenizer):
    marked = (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
        "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
        "{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}{{ '\\n' }}{% endfor %}"
    )
    ds = DatasetConfig(path="x", type="chat_template")
    _, labels = ct.encode({"messages": CONVERSATION}, ds, smol_tokenizer, marked, False)
    assert smol_tokenizer.decode([t for t in labels if t != IGNORE]) == (
        "It is blue on a clear day.<|im_end|>Mostly black, with stars.<|im_end|>"
    )


DROPS_SYSTEM = (  # like templates that leave messages out (Qwen3 drops earlier reasoning)
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
)
MOVES_SYSTEM = (  # like Mistral's: the system prompt folded into the last user turn
    "{% set system = messages[0]['content'] if messages[0]['role'] == 'system' else '' %}"
    "{% for message in messages %}{% if message['role'] == 'user' %}"
    "{% if loop.last or loop.index == messages|length - 1 %}{{ '[INST] ' + system + '\\n\\n' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% endif %}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)
RAISES = "{{ raise_exception('Conversation roles must alternate user/assistant') }}"


@pytest.mark.parametrize(
    "row, template, field, words",
    [
        ({"messages": [{"role": "wizard", "content": "x"}]}, None, "messages[0].role", "unknown role 'wizard'"),
        ({"messages": []}, None, "messages", "empty conversation"),
        ({"text": "hi"}, None, "messages", "is missing"),
        ({"messages": [{"role": "user"}]}, None, "messages[0].content", "missing or not a string"),
        ({"messages": CONVERSATION}, RAISES, "messages", "cannot be rendered by the chat template: Conversation roles must alternate"),
        ({"messages": CONVERSATION}, DROPS_SYSTEM, "messages[0].content", "not in the rendered conversation"),
        ({"messages": CONVERSATION}, MOVES_SYSTEM, "messages[1].content", "comes before message 0"),
        (
            {"messages": [{"role": "user", "content": "You are a helpful AI assistant named SmolLM, trained by Hugging Face"},
                          {"role": "assistant", "content": "Indeed."}]},
            None, "messages[0].content", "appears 2 times",
        ),
    ],
)
def test_bad_conversations_name_the_field(smol_tokenizer, row, template, field, words):
    ds = DatasetConfig(path="x", type="chat_template")
    with pytest.raises(FieldError) as info:
        ct.encode(row, ds, smol_tokenizer, template or smol_tokenizer.chat_template, False)
    assert info.value.field == field
    assert words in str(info.value)
