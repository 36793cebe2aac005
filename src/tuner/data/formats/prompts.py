"""Prompts to sample from (`rl: grpo`): `type: chat_template`, or no `type`.

Each row gives its prompt one of two ways:
  * `field_messages` (default `messages`), or a `prompt` field holding messages: a
    conversation ending in a user turn, rendered with the chat template and its generation
    prompt (TRL's conversational prompts);
  * a `prompt` string: the text as written (TRL's standard prompts), tokenized with the
    tokenizer's own special tokens.
Every other field of the row is kept, JSON-encoded, and handed to the reward functions as a
keyword argument (TRL's convention: f(prompts, completions, **columns)), so a reward can
compare a completion with the row's reference answer.

The prepared row: `input_ids` (the prompt's tokens), `prompt` (the prompt as the row wrote it,
JSON: a string or a list of messages, as reward functions receive it) and `reward_columns`
(JSON of the other fields). The length policy: a prompt longer than sequence_len is dropped,
refused or (truncate) keeps its last sequence_len tokens.
"""

from __future__ import annotations

import json
from typing import Any

from tuner.config.dataset_types import GRPO_KIND
from tuner.config.schema import DatasetConfig
from tuner.data.formats import chat_template
from tuner.data.formats.base import DatasetFormat, EncodeContext, FieldError, register

PROMPT_FIELD = "prompt"
INTERNAL = ("_row", "_piece")  # columns the loader adds


def _prompt(row: dict[str, Any], ds: DatasetConfig) -> tuple[str, Any]:
    """(the field the prompt is in, the prompt: a string or a list of messages)."""
    for name in (ds.field_messages, PROMPT_FIELD):
        value = row.get(name)
        if isinstance(value, list) or (name == PROMPT_FIELD and isinstance(value, str)):
            return name, value
    raise FieldError(ds.field_messages, f"is missing: a prompt is messages ending in a user turn "
                                        f"({ds.field_messages!r}, or {PROMPT_FIELD!r}) or a {PROMPT_FIELD!r} string")


def _messages(row: dict[str, Any], name: str, ds: DatasetConfig) -> list[Any]:
    msgs = chat_template.messages({**row, ds.field_messages: row[name]}, ds)
    if msgs[-1].role != "user":
        raise FieldError(f"{name}[{len(row[name]) - 1}]", f"must be the user's turn (the prompt ends in it), got role "
                                                          f"{msgs[-1].role!r}")
    return msgs


class Prompts(DatasetFormat):
    name = GRPO_KIND
    chat = True
    rows = "prompt"

    def field_names(self, ds: DatasetConfig | None) -> tuple[str, ...]:
        assert ds is not None
        return (ds.field_messages, PROMPT_FIELD, chat_template.ROW_SYSTEM)

    def check(self, row: dict[str, Any], ds: DatasetConfig | None) -> None:
        assert ds is not None
        name, value = _prompt(row, ds)
        if isinstance(value, list):
            _messages(row, name, ds)
        elif not value.strip():
            raise FieldError(name, "is an empty prompt")

    def encode_many(self, rows: list[dict[str, Any]], ds: DatasetConfig | None, ctx: EncodeContext) -> list[Any]:
        assert ds is not None
        out: list[Any] = []
        for row in rows:
            try:
                self.check(row, ds)
                name, value = _prompt(row, ds)
                if isinstance(value, list):
                    msgs = chat_template._as_dicts(_messages(row, name, ds), ds)
                    text = ctx.tokenizer.apply_chat_template(msgs, chat_template=ctx.template, tokenize=False,
                                                             add_generation_prompt=True)
                    ids = ctx.tokenizer(text, add_special_tokens=False)["input_ids"]
                else:
                    ids = ctx.tokenizer(value)["input_ids"]
            except FieldError as err:
                out.append(err)
                continue
            columns = {k: v for k, v in row.items() if k != name and k not in INTERNAL}
            try:
                encoded = json.dumps(columns)
            except (TypeError, ValueError) as err:
                out.append(FieldError(next(iter(columns), name), f"cannot be passed to reward functions ({err})"))
                continue
            out.append((list(ids), json.dumps(value), encoded))
        return out


register(Prompts())


def prompt_row(encoded: tuple[list[int], str, str], sequence_len: int, strategy: str) -> dict[str, Any]:
    """The prepared row of a prompt with its status (tokenize.KEPT / TOO_LONG); under truncate a
    prompt longer than sequence_len keeps its last sequence_len tokens (the end leads into the answer)."""
    from tuner.data.tokenize import KEPT, NOTHING_TO_TRAIN, TOO_LONG

    ids, prompt, columns = encoded
    status, truncated = KEPT, False
    if len(ids) > sequence_len:
        if strategy == "truncate":
            ids, truncated = ids[-sequence_len:], True
        else:
            status = TOO_LONG
    if status == KEPT and not ids:
        status = NOTHING_TO_TRAIN
    return {"input_ids": ids, "prompt": prompt, "reward_columns": columns, "status": status, "truncated": truncated}
