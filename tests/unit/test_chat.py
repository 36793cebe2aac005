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


# --------------------------------------------------------------------------- named templates


# The token that ends a turn in each named template (markers the SmolLM2 vocabulary lacks are
# added to a copy of the tokenizer as special tokens, as `special_tokens` / `tokens` would).
TURN_END = {
    "chatml": "<|im_end|>", "qwen_25": "<|im_end|>", "qwen3": "<|im_end|>", "qwen3_5": "<|im_end|>",
    "falcon_h1": "<|im_end|>", "nemotron_h": "<|im_end|>", "phi_4": "<|im_end|>",
    "llama3": "<|eot_id|>", "llama4": "<|eot|>", "gemma": "<end_of_turn>", "gemma3": "<end_of_turn>",
    "gemma3n": "<end_of_turn>", "gemma4": "<turn|>", "gemma4_unified": "<turn|>", "phi_3": "<|end|>",
    "phi_35": "<|end|>", "deepseek_v3": "<｜end▁of▁sentence｜>", "cohere": "<|END_OF_TURN_TOKEN|>",
    "aya": "<|END_OF_TURN_TOKEN|>", "jamba": "<|eom|>", "exaone": "[|endofturn|]",
}
MARKERS = ["<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|header_start|>", "<|header_end|>", "<|eot|>",
           "<start_of_turn>", "<end_of_turn>", "<|turn>", "<turn|>", "<|end|>", "<|user|>", "<|assistant|>",
           "<|system|>", "<｜end▁of▁sentence｜>", "<|END_OF_TURN_TOKEN|>", "<|START_OF_TURN_TOKEN|>", "<|eom|>",
           "<|bom|>", "[|endofturn|]", "<|im_sep|>", "<｜User｜>", "<｜Assistant｜>"]
# gemma refuses a system message; Mistral v2/v3 write it into the last user turn only, so a conversation
# ending with an answer loses it (such rows are refused: see DROPS_SYSTEM below).
NO_SYSTEM = {"gemma", "mistral_v2v3", "mistral_v3_tekken"}
# Metharme writes EOS once, at the end: an earlier answer ends at the next <|user|> marker.
LAST_ONLY = {"metharme"}
# Templates that write a space between an answer and its EOS (the space is template text, not trained).
SPACED = {"llama2"}


@pytest.fixture(scope="module")
def marked_tokenizer(smol_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(smol_tokenizer_dir))
    tok.add_special_tokens({"additional_special_tokens": MARKERS})
    return tok


def _runs(labels):
    """Maximal runs of trained positions, as lists of token ids."""
    runs, current = [], []
    for label in labels:
        if label != IGNORE:
            current.append(label)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


@pytest.mark.parametrize("name", __import__("tuner.config.dataset_types", fromlist=["x"]).NAMED_TEMPLATES)
def test_named_template_trains_exactly_the_answers_and_their_turn_end(marked_tokenizer, name):
    """For every named template: the trained tokens are each assistant answer (as the template
    writes it) followed by its end-of-turn token, one run per answer, nothing else."""
    from tuner.data.templates import named

    tok = marked_tokenizer
    conversation = CONVERSATION[1:] if name in NO_SYSTEM else CONVERSATION
    ds = DatasetConfig(path="x", type="chat_template")
    ids, labels = ct.encode({"messages": conversation}, ds, tok, named(name), False)
    answers = [m["content"] for m in conversation if m["role"] == "assistant"]
    end = TURN_END.get(name, tok.eos_token)
    runs = [tok.decode(run) for run in _runs(labels)]
    if name in LAST_ONLY:
        want = [answers[0] + "<|user|>", answers[1] + end]
    elif name in SPACED:
        want = [piece for a in answers for piece in (a, end)]
    else:
        want = [a + end for a in answers]
    assert [r.strip() for r in runs] == want, tok.decode(ids)


# --------------------------------------------------------------------------- eot_tokens, train_on_eot


# Each message ends with <END> (a plain added token, not a special one), and the conversation with EOS.
END_MARKED = (
    "{% for message in messages %}{{ message['role'] + ':\\n' + message['content'] + '<END>\\n' }}{% endfor %}"
    "{{ eos_token }}"
)


@pytest.fixture(scope="module")
def end_tokenizer(smol_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(smol_tokenizer_dir))
    tok.add_tokens(["<END>"])  # one token, but not a special one
    return tok


def _trained(tok, labels):
    return tok.decode([t for t in labels if t != IGNORE])


def test_eot_tokens_decide_which_tokens_end_a_turn(end_tokenizer):
    tok, row = end_tokenizer, {"messages": CONVERSATION[1:5]}
    ds = DatasetConfig(path="x", type="chat_template")
    # Without eot_tokens only special tokens end a turn: <END> is not one, so only the last answer
    # has an end (the EOS closing the conversation).
    _, labels = ct.encode(row, ds, tok, END_MARKED, False)
    assert _trained(tok, labels) == "It is blue on a clear day.Mostly black, with stars.<|im_end|>"
    # With eot_tokens: <END> ends each turn; EOS, not one of them, follows train_on_eos (turn).
    _, labels = ct.encode(row, ds, tok, END_MARKED, False, eot_tokens=("<END>",))
    assert _trained(tok, labels) == "It is blue on a clear day.<END>Mostly black, with stars.<END><|im_end|>"


def test_train_on_eot_and_train_on_eos_are_separate_options(end_tokenizer):
    tok, row = end_tokenizer, {"messages": CONVERSATION[1:5]}
    both = DatasetConfig(path="x", type="chat_template", train_on_eot="turn", train_on_eos="last")
    _, labels = ct.encode(row, both, tok, END_MARKED, False, eot_tokens=("<END>",))
    # <END> after each answer (train_on_eot: turn); EOS after the last one (train_on_eos: last).
    assert _trained(tok, labels) == "It is blue on a clear day.<END>Mostly black, with stars.<END><|im_end|>"
    no_eot = DatasetConfig(path="x", type="chat_template", train_on_eot="none", train_on_eos="none")
    _, labels = ct.encode(row, no_eot, tok, END_MARKED, False, eot_tokens=("<END>",))
    assert _trained(tok, labels) == "It is blue on a clear day.Mostly black, with stars."
    # train_on_eot defaults to train_on_eos.
    default = DatasetConfig(path="x", type="chat_template", train_on_eos="all")
    _, labels = ct.encode(row, default, tok, END_MARKED, False, eot_tokens=("<END>",))
    assert _trained(tok, labels).count("<END>") == 4


def test_eot_tokens_must_be_single_tokens_and_agree_with_eos(smol_tokenizer):
    from tuner.errors import UserError

    ds = DatasetConfig(path="x", type="chat_template")
    with pytest.raises(UserError, match=r"eot_tokens: '<end_of_turn>' is \d+ tokens"):
        ct.encode({"messages": CONVERSATION}, ds, smol_tokenizer, smol_tokenizer.chat_template, False,
                  eot_tokens=("<end_of_turn>",))
    conflict = DatasetConfig(path="x", type="chat_template", train_on_eos="turn", train_on_eot="all")
    with pytest.raises(UserError, match="train_on_eos is turn but train_on_eot is all"):
        ct.encode({"messages": CONVERSATION}, conflict, smol_tokenizer, smol_tokenizer.chat_template, False,
                  eot_tokens=("<|im_end|>",))


# --------------------------------------------------------------------------- system messages, reasoning


def test_drop_system_message(smol_tokenizer):
    ds = DatasetConfig(path="x", type="chat_template", drop_system_message=True)
    ids, labels = ct.encode({"messages": CONVERSATION}, ds, smol_tokenizer, smol_tokenizer.chat_template, False)
    text = smol_tokenizer.decode(ids)
    assert "one short sentence" not in text and "You are a helpful AI assistant named SmolLM" in text
    assert _trained(smol_tokenizer, labels) == "It is blue on a clear day.<|im_end|>Mostly black, with stars.<|im_end|>"


def test_reasoning_is_rendered_and_trained_with_its_answer(smol_tokenizer):
    """Qwen3 shows the reasoning of turns after the last user query (trained from the reasoning
    to the end of the answer) and drops earlier ones (nothing to train there, no error)."""
    from tuner.data.templates import named

    messages = [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4", "reasoning_content": "Two and two make four."},
        {"role": "user", "content": "3+3?"},
        {"role": "assistant", "content": "6", "reasoning_content": "Three and three make six."},
    ]
    ds = DatasetConfig(path="x", type="chat_template")
    ids, labels = ct.encode({"messages": messages}, ds, smol_tokenizer, named("qwen3"), False)
    assert "Two and two" not in smol_tokenizer.decode(ids)
    assert _trained(smol_tokenizer, labels) == "4<|im_end|>Three and three make six.\n</think>\n\n6<|im_end|>"


def test_split_thinking_and_thinking_field_names(smol_tokenizer):
    from tuner.data.templates import named

    inline = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "<think>Add them.</think>\n\n4"}]
    ds = DatasetConfig(path="x", type="chat_template", split_thinking=True)
    _, labels = ct.encode({"messages": inline}, ds, smol_tokenizer, named("qwen3"), False)
    assert _trained(smol_tokenizer, labels) == "Add them.\n</think>\n\n4<|im_end|>"
    # gpt-oss style: the data's key and the template's key named differently from reasoning_content.
    own = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}{% if m.thinking %}"
           "{{ '[' + m.thinking + ']' }}{% endif %}{{ m['content'] + '<|im_end|>\\n' }}{% endfor %}")
    row = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4", "thought": "Add."}]}
    ds = DatasetConfig(path="x", type="chat_template", field_thinking="thought", template_thinking_key="thinking")
    _, labels = ct.encode(row, ds, smol_tokenizer, own, False)
    assert _trained(smol_tokenizer, labels) == "Add.]4<|im_end|>"


def test_rows_system_field_roles_to_train_by_data_name_and_tool_calls(smol_tokenizer):
    from tuner.data.templates import named

    # A row's own `system` field opens the conversation when its messages have none (as in Axolotl).
    row = {"system": "Answer in French.", "messages": CONVERSATION[1:3]}
    ids, _ = ct.encode(row, DatasetConfig(path="x", type="chat_template"), smol_tokenizer, named("chatml"), False)
    assert smol_tokenizer.decode(ids).startswith("<|im_start|>system\nAnswer in French.<|im_end|>")
    # roles_to_train may name the data's roles (gpt) as Axolotl allows.
    sharegpt = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}
    ds = DatasetConfig(path="x", type="chat_template", field_messages="conversations", roles_to_train=["gpt"],
                       message_property_mappings={"role": "from", "content": "value"})
    _, labels = ct.encode(sharegpt, ds, smol_tokenizer, named("chatml"), False)
    assert _trained(smol_tokenizer, labels) == "Hello!<|im_end|>"
    # Tool calls would be dropped from the rendering: refused, naming the message.
    calls = {"messages": [{"role": "user", "content": "6*7?"},
                          {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "mul"}}]}]}
    with pytest.raises(FieldError) as info:
        ct.encode(calls, DatasetConfig(path="x", type="chat_template"), smol_tokenizer, named("chatml"), False)
    assert info.value.field == "messages[1].tool_calls" and "not supported yet" in str(info.value)
