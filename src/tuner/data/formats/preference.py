"""Preference dataset types (`rl:` dpo, ipo, simpo, orpo: pairs; kto: unpaired), as Axolotl
names them in its prompt_strategies/dpo and /kto.

Every type turns a raw row into text: a prompt and the chosen and rejected completions (KTO:
one completion and whether it is desirable). Tokenization is then the same for all:
  * the prompt is tokenized alone, with the tokenizer's special tokens (a BOS where it adds
    one) when the prompt is plain text, without them when a chat template rendered it (the
    template writes its own); each completion is tokenized alone, without special tokens, and
    the EOS token is appended when the completion does not already end with it (as TRL does);
  * chosen_input_ids = prompt + chosen, rejected_input_ids = prompt + rejected: the prompt's
    tokens are identical on both sides by construction, and the boundary is a token boundary;
  * labels are -100 on the prompt and the token ids on the completion: built here, once.

`chat_template.default` renders the row's messages with the chat template and its generation
prompt (SmolLM2's template injects its default system prompt when the messages have none: it
is then part of the prompt) and takes each completion as the template renders that assistant
message after the prompt, from its content to its end-of-turn token, without the whitespace
after it (`content<|im_end|>`, as Axolotl's chat_template.default). A template that renders
the prompt differently once an answer follows is an error naming the row.

The string types write Axolotl's exact text: `chatml.*` (<|im_start|> ... <|im_end|>) and
`llama3.*` (<|start_header_id|> ... <|eot_id|>), with its field choices per variant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from tuner.config.schema import DatasetConfig
from tuner.data.formats import chat_template
from tuner.data.formats.base import DatasetFormat, EncodeContext, FieldError, register, text_field
from tuner.data.labels import IGNORE


@dataclass(frozen=True)
class PairText:
    prompt: str
    chosen: str
    rejected: str
    rendered: bool  # a chat template rendered the prompt (it carries its own special tokens)


@dataclass(frozen=True)
class UnpairedText:
    prompt: str
    completion: str
    desirable: bool
    rendered: bool


@dataclass(frozen=True)
class PairEncoded:
    """A tokenized pair: the prompt's ids and each completion's ids (before the length policy)."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]


@dataclass(frozen=True)
class UnpairedEncoded:
    prompt: list[int]
    completion: list[int]
    desirable: bool


class PreferenceFormat(DatasetFormat):
    """A pair type: rows become PairText, then PairEncoded."""

    rows = "pair"

    def text(self, row: dict[str, Any], ds: DatasetConfig | None, ctx: EncodeContext | None) -> PairText:
        raise NotImplementedError

    def check(self, row: dict[str, Any], ds: DatasetConfig | None) -> None:
        if not self.chat:
            self.text(row, ds, None)
        else:
            self.fields(row, ds)

    def fields(self, row: dict[str, Any], ds: DatasetConfig | None) -> Any:
        """The row's fields parsed, without a tokenizer (chat types: the messages)."""
        return self.text(row, ds, None)

    def encode_many(self, rows: list[dict[str, Any]], ds: DatasetConfig | None, ctx: EncodeContext) -> list[Any]:
        texts: list[PairText | FieldError] = []
        for row in rows:
            try:
                texts.append(self.text(row, ds, ctx))
            except FieldError as err:
                texts.append(err)
        good = [t for t in texts if not isinstance(t, FieldError)]
        prompts = _prompt_ids(ctx.tokenizer, good)
        completions = _completion_ids(ctx.tokenizer, [c for t in good for c in (t.chosen, t.rejected)])
        encoded = iter(PairEncoded(p, completions[2 * i], completions[2 * i + 1]) for i, p in enumerate(prompts))
        return [t if isinstance(t, FieldError) else next(encoded) for t in texts]


class UnpairedFormat(PreferenceFormat):
    """A KTO type: rows become UnpairedText, then UnpairedEncoded."""

    rows = "unpaired"

    def text(self, row: dict[str, Any], ds: DatasetConfig | None, ctx: EncodeContext | None) -> UnpairedText:
        raise NotImplementedError

    def encode_many(self, rows: list[dict[str, Any]], ds: DatasetConfig | None, ctx: EncodeContext) -> list[Any]:
        texts: list[UnpairedText | FieldError] = []
        for row in rows:
            try:
                texts.append(self.text(row, ds, ctx))
            except FieldError as err:
                texts.append(err)
        good = [t for t in texts if not isinstance(t, FieldError)]
        prompts = _prompt_ids(ctx.tokenizer, good)
        completions = _completion_ids(ctx.tokenizer, [t.completion for t in good])
        encoded = iter(UnpairedEncoded(p, c, t.desirable) for p, c, t in zip(prompts, completions, good))
        return [t if isinstance(t, FieldError) else next(encoded) for t in texts]


def _prompt_ids(tokenizer: Any, texts: list[Any]) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in texts]
    for rendered in (True, False):
        at = [i for i, t in enumerate(texts) if t.rendered is rendered]
        if at:
            ids = tokenizer([texts[i].prompt for i in at], add_special_tokens=not rendered)["input_ids"]
            for i, row in zip(at, ids):
                out[i] = list(row)
    return out


def _completion_ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    eos = tokenizer.eos_token_id
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [list(row) if row and row[-1] == eos else [*row, eos] for row in ids]


# --------------------------------------------------------------------------- the length policy


def pair_row(pair: PairEncoded, sequence_len: int, strategy: str, max_prompt_len: int | None) -> dict[str, Any]:
    """The prepared row of a pair, with its status (tokenize.KEPT / TOO_LONG / NOTHING_TO_TRAIN).

    A pair is too long when prompt + its longer completion exceeds sequence_len. Under
    `truncate` the prompt is cut first, to its last `max_prompt_len` tokens (default: half of
    sequence_len), then each completion to what is left.
    """
    from tuner.data.tokenize import KEPT, NOTHING_TO_TRAIN, TOO_LONG

    prompt, chosen, rejected = pair.prompt, pair.chosen, pair.rejected
    status, truncated = KEPT, False
    if len(prompt) + max(len(chosen), len(rejected)) > sequence_len:
        if strategy == "truncate":
            keep = min(max_prompt_len or sequence_len // 2, sequence_len - 1)
            if len(prompt) > keep:
                prompt = prompt[len(prompt) - keep:]
            room = sequence_len - len(prompt)
            chosen, rejected, truncated = chosen[:room], rejected[:room], True
        else:
            status = TOO_LONG
    if status == KEPT and (not chosen or not rejected or not prompt):
        status = NOTHING_TO_TRAIN
    row = {"prompt_len": len(prompt), "status": status, "truncated": truncated}
    for side, completion in (("chosen", chosen), ("rejected", rejected)):
        row[f"{side}_input_ids"] = [*prompt, *completion]
        row[f"{side}_labels"] = [IGNORE] * len(prompt) + list(completion)
    return row


def unpaired_row(example: UnpairedEncoded, sequence_len: int, strategy: str, max_prompt_len: int | None) -> dict[str, Any]:
    """The prepared row of a KTO example (the same policy as `pair_row`, with one completion)."""
    pair = pair_row(PairEncoded(example.prompt, example.completion, example.completion), sequence_len, strategy,
                    max_prompt_len)
    return {"input_ids": pair["chosen_input_ids"], "labels": pair["chosen_labels"], "prompt_len": pair["prompt_len"],
            "desirable": example.desirable, "status": pair["status"], "truncated": pair["truncated"]}


# --------------------------------------------------------------------------- chat templates


def _completion_message(value: Any, field: str, ds: DatasetConfig) -> dict[str, Any]:
    """chosen / rejected / completion: a string, a message, or a list ending in the assistant message."""
    keys = {"role": "role", "content": "content", **(ds.message_property_mappings or {})}
    if isinstance(value, str):
        return {keys["role"]: "assistant", keys["content"]: value}
    if isinstance(value, dict):
        return value
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        return value[-1]
    raise FieldError(field, "must be a string, a message, or a list of messages ending in the answer")


def _conversation(row: dict[str, Any], ds: DatasetConfig, sides: tuple[str, ...]) -> tuple[list, dict[str, list]]:
    """(the prompt's messages, {side: the prompt's messages + that side's answer})."""
    prompt_field = ds.field_messages
    if isinstance(row.get(prompt_field), str):
        keys = {"role": "role", "content": "content", **(ds.message_property_mappings or {})}
        row = {**row, prompt_field: [{keys["role"]: "user", keys["content"]: row[prompt_field]}]}
    prompt = chat_template.messages(row, ds)
    full = {}
    for side in sides:
        name = getattr(ds, f"field_{side}")
        if row.get(name) is None:
            raise FieldError(name, "is missing or null")
        answer = _completion_message(row[name], name, ds)
        parsed = chat_template.messages({prompt_field: [answer]}, ds)
        if parsed[0].role != "assistant":
            raise FieldError(name, f"must be the assistant's answer, got role {parsed[0].role!r}")
        full[side] = [*prompt, parsed[0]]
    return prompt, full


def _render_completions(prompt: list, full: dict[str, list], ctx: EncodeContext, ds: DatasetConfig) -> tuple[str, dict[str, str]]:
    field = ds.field_messages
    text = ctx.tokenizer.apply_chat_template(chat_template._as_dicts(prompt, ds), chat_template=ctx.template,
                                             tokenize=False, add_generation_prompt=True)
    out = {}
    for side, msgs in full.items():
        whole = chat_template.render(msgs, ctx.tokenizer, ctx.template, field, ds)
        if not whole.startswith(text):
            raise FieldError(field, "renders differently once an answer follows it (the chat template changes the "
                             "prompt's text), so the prompt cannot be shared by both completions")
        out[side] = whole[len(text):].rstrip()
    return text, out


class ChatPairs(PreferenceFormat):
    """`chat_template.default`: `field_messages` (the prompt's messages, or a string) with
    `field_chosen` / `field_rejected` (each a string, a message, or a list ending in it)."""

    name = "chat_template.default"
    chat = True

    def field_names(self, ds: DatasetConfig | None) -> tuple[str, ...]:
        assert ds is not None
        return (ds.field_messages, ds.field_chosen, ds.field_rejected, chat_template.ROW_SYSTEM)

    def fields(self, row: dict[str, Any], ds: DatasetConfig | None) -> Any:
        assert ds is not None
        return _conversation(row, ds, ("chosen", "rejected"))

    def text(self, row: dict[str, Any], ds: DatasetConfig | None, ctx: EncodeContext | None) -> PairText:
        assert ds is not None and ctx is not None
        prompt, completions = _render_completions(*self.fields(row, ds), ctx, ds)
        return PairText(prompt, completions["chosen"], completions["rejected"], rendered=True)


class ChatUnpaired(UnpairedFormat):
    """`chat_template.default` under `rl: kto`: `field_messages` (the prompt), `field_completion`
    (a string, a message, or a list ending in it) and `field_label` (true: desirable)."""

    name = "kto:chat_template.default"
    chat = True

    def field_names(self, ds: DatasetConfig | None) -> tuple[str, ...]:
        assert ds is not None
        return (ds.field_messages, ds.field_completion, ds.field_label, chat_template.ROW_SYSTEM)

    def fields(self, row: dict[str, Any], ds: DatasetConfig | None) -> Any:
        assert ds is not None
        _label(row, ds.field_label)
        return _conversation(row, ds, ("completion",))

    def text(self, row: dict[str, Any], ds: DatasetConfig | None, ctx: EncodeContext | None) -> UnpairedText:
        assert ds is not None and ctx is not None
        prompt, completions = _render_completions(*self.fields(row, ds), ctx, ds)
        return UnpairedText(prompt, completions["completion"], _label(row, ds.field_label), rendered=True)


def _label(row: dict[str, Any], field: str) -> bool:
    value = row.get(field)
    if not isinstance(value, bool):
        raise FieldError(field, f"must be true (desirable) or false (undesirable), got {value!r}")
    return value


# --------------------------------------------------------------------------- Axolotl's string types

# (system block, user turn ending in the assistant's header, end of an answer)
TEMPLATES = {
    "chatml": ("<|im_start|>system\n{system}<|im_end|>\n",
               "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n", "<|im_end|>"),
    "llama3": ("<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>",
               "<|start_header_id|>user<|end_header_id|>\n\n{prompt}<|eot_id|><|start_header_id|>assistant"
               "<|end_header_id|>\n\n", "<|eot_id|>"),
}


def _first(row: dict[str, Any], names: tuple[str, ...]) -> str:
    return next((n for n in names if n in row), names[-1])


def _turn(row: dict[str, Any], field: str, index: int) -> str:
    """The content of message `index` of a conversation field (Axolotl's argilla_chat / ultra)."""
    value = row.get(field)
    if not isinstance(value, list) or len(value) <= index or not isinstance(value[index], dict):
        raise FieldError(field, f"must be a conversation with at least {index + 1} messages")
    content = value[index].get("content")
    if not isinstance(content, str):
        raise FieldError(f"{field}[{index}].content", "is missing or not a string")
    return content


# variant -> (prompt field(s), system allowed, how chosen/rejected (KTO: completion) are read)
Reader = Callable[[dict[str, Any], str], str]
_PLAIN: Reader = lambda row, name: text_field(row, name)  # noqa: E731
_ANSWER_OF_CONVERSATION: Reader = lambda row, name: _turn(row, name, 1)  # noqa: E731
PAIR_VARIANTS: dict[str, tuple[tuple[str, ...], bool, Reader]] = {
    "default": (("prompt", "input", "question", "instruction"), True, _PLAIN),
    "icr": (("input",), True, _PLAIN),
    "intel": (("question",), True, _PLAIN),
    "prompt_pairs": (("prompt",), True, _PLAIN),
    "ultra": (("prompt",), True, _ANSWER_OF_CONVERSATION),
}
KTO_VARIANTS: dict[str, tuple[tuple[str, ...], bool, Reader]] = {
    "argilla": (("instruction",), True, _PLAIN),
    "intel": (("question",), True, _PLAIN),
    "prompt_pairs": (("prompt",), True, _PLAIN),
    "ultra": (("prompt",), True, _PLAIN),
}


def _string_prompt(family: str, row: dict[str, Any], prompt: str, system: bool) -> str:
    system_block, user, _ = TEMPLATES[family]
    head = system_block.format(system=row["system"]) if system and row.get("system") else ""
    return head + user.format(prompt=prompt)


class StringPairs(PreferenceFormat):
    def __init__(self, family: str, variant: str):
        self.name, self.family, self.variant = f"{family}.{variant}", family, variant

    def field_names(self, ds: DatasetConfig | None) -> tuple[str, ...]:
        if self.variant == "argilla_chat":
            return ("chosen", "rejected")
        names = PAIR_VARIANTS[self.variant][0]
        return (*names, "system", "chosen", "rejected", "chosen_response", "rejected_response")

    def text(self, row: dict[str, Any], ds: DatasetConfig | None, ctx: EncodeContext | None) -> PairText:
        end = TEMPLATES[self.family][2]
        if self.variant == "argilla_chat":
            prompt = _string_prompt(self.family, row, _turn(row, "chosen", 0), system=False)
            return PairText(prompt, _turn(row, "chosen", 1) + end, _turn(row, "rejected", 1) + end, rendered=False)
        names, system, read = PAIR_VARIANTS[self.variant]
        prompt = _string_prompt(self.family, row, text_field(row, _first(row, names)), system)
        chosen = read(row, _first(row, ("chosen", "chosen_response")) if self.variant == "default" else "chosen")
        rejected = read(row, _first(row, ("rejected", "rejected_response")) if self.variant == "default" else "rejected")
        return PairText(prompt, chosen + end, rejected + end, rendered=False)


class StringUnpaired(UnpairedFormat):
    def __init__(self, family: str, variant: str):
        self.name, self.family, self.variant = f"kto:{family}.{variant}", family, variant

    def field_names(self, ds: DatasetConfig | None) -> tuple[str, ...]:
        if self.variant == "argilla_chat":
            return ("completion", "label")
        return (*KTO_VARIANTS[self.variant][0], "system", "completion", "label")

    def text(self, row: dict[str, Any], ds: DatasetConfig | None, ctx: EncodeContext | None) -> UnpairedText:
        end = TEMPLATES[self.family][2]
        if self.variant == "argilla_chat":
            prompt = _string_prompt(self.family, row, _turn(row, "completion", 0), system=False)
            return UnpairedText(prompt, _turn(row, "completion", 1) + end, _label(row, "label"), rendered=False)
        names, system, read = KTO_VARIANTS[self.variant]
        prompt = _string_prompt(self.family, row, text_field(row, _first(row, names)), system)
        return UnpairedText(prompt, read(row, "completion") + end, _label(row, "label"), rendered=False)


def _user_defined_prompt(row: dict[str, Any], f: Any) -> str:
    """A user-defined type's prompt: `prompt_format` filled with the row's prompt and system fields."""
    return f.prompt_format.format(prompt=text_field(row, f.field_prompt),
                                  system=text_field(row, f.field_system, required=False))


class UserDefinedPairs(PreferenceFormat):
    """`type` as a mapping under `rl:` (Axolotl's user_defined DPO type): `field_prompt`,
    `field_system`, `field_chosen`, `field_rejected`, `prompt_format` ({prompt}, {system}),
    `chosen_format` ({chosen}), `rejected_format` ({rejected})."""

    name = "user_defined_pairs"

    def field_names(self, ds: DatasetConfig | None) -> tuple[str, ...]:
        f = ds.type  # type: ignore[union-attr]
        return (f.field_prompt, f.field_system, f.field_chosen, f.field_rejected)

    def text(self, row: dict[str, Any], ds: DatasetConfig | None, ctx: EncodeContext | None) -> PairText:
        f = ds.type  # type: ignore[union-attr]
        prompt = _user_defined_prompt(row, f)
        chosen = f.chosen_format.format(chosen=text_field(row, f.field_chosen))
        rejected = f.rejected_format.format(rejected=text_field(row, f.field_rejected))
        return PairText(prompt, chosen, rejected, rendered=False)


class UserDefinedUnpaired(UnpairedFormat):
    """A mapping `type` under `rl: kto`: `field_prompt`, `field_system`, `field_completion`,
    `field_label`, `prompt_format`, `completion_format`."""

    name = "user_defined_unpaired"

    def field_names(self, ds: DatasetConfig | None) -> tuple[str, ...]:
        f = ds.type  # type: ignore[union-attr]
        return (f.field_prompt, f.field_system, f.field_completion, f.field_label)

    def text(self, row: dict[str, Any], ds: DatasetConfig | None, ctx: EncodeContext | None) -> UnpairedText:
        f = ds.type  # type: ignore[union-attr]
        prompt = _user_defined_prompt(row, f)
        completion = f.completion_format.format(completion=text_field(row, f.field_completion))
        return UnpairedText(prompt, completion, _label(row, f.field_label), rendered=False)


class Passthrough(PreferenceFormat):
    """`passthrough`: rows that already hold the `prompt`, `chosen` and `rejected` text."""

    name = "passthrough"

    def field_names(self, ds: DatasetConfig | None) -> tuple[str, ...]:
        return ("prompt", "chosen", "rejected")

    def text(self, row: dict[str, Any], ds: DatasetConfig | None, ctx: EncodeContext | None) -> PairText:
        return PairText(text_field(row, "prompt"), text_field(row, "chosen"), text_field(row, "rejected"), rendered=False)


class PassthroughUnpaired(UnpairedFormat):
    """`passthrough` under `rl: kto`: `prompt`, `completion` and `label` as they are."""

    name = "kto:passthrough"

    def field_names(self, ds: DatasetConfig | None) -> tuple[str, ...]:
        return ("prompt", "completion", "label")

    def text(self, row: dict[str, Any], ds: DatasetConfig | None, ctx: EncodeContext | None) -> UnpairedText:
        return UnpairedText(text_field(row, "prompt"), text_field(row, "completion"), _label(row, "label"),
                            rendered=False)


for _fmt in (ChatPairs(), ChatUnpaired(), UserDefinedPairs(), UserDefinedUnpaired(), Passthrough(),
             PassthroughUnpaired()):
    register(_fmt)
for _family in TEMPLATES:
    for _variant in (*PAIR_VARIANTS, "argilla_chat"):
        register(StringPairs(_family, _variant))
    for _variant in (*KTO_VARIANTS, "argilla_chat"):
        register(StringUnpaired(_family, _variant))
