"""`type: chat_template`: conversations rendered with a chat template, with every message
of a trained role trained (all assistant turns, not only the last).

How the trained tokens are found
  1. The whole conversation is rendered once with the chat template.
  2. Each message's content is located verbatim in the rendering (or, when the template
     trims it, its stripped form). Contents are placed longest first, and an occurrence
     inside an already placed message does not count, so "Yes" inside "Yes or no?" is not
     ambiguous. Every content must then be found exactly as many times as messages carry
     it, and the spans must come in message order; otherwise the template moved, dropped,
     duplicated or rewrote a message (Mistral folds the system prompt into a user turn,
     Qwen3 drops earlier reasoning, SmolLM2 injects a default system prompt whose text a
     message may repeat) and the row is an error naming the message.
  3. The rendering is tokenized with offsets. A token is trained when any of its
     characters lies in the content of a trained message (a token straddling template text
     and trained content is trained).
  4. End-of-turn tokens: the first special token after a message's content, before the
     next message (`<|im_end|>`, `<|eot_id|>`, `</s>`, `<end_of_turn>`, ...). Which of them
     train follows `train_on_eos`: `turn` (those ending trained messages), `all`, `last`
     (only the last trained message's), `none`.
  Templates with `{% generation %}` markers use the markers instead (when only the
  assistant role trains and no message overrides it): transformers' assistant mask decides.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import Any

from tuner.config.schema import DatasetConfig
from tuner.data.formats import FieldError
from tuner.data.tokenize import IGNORE

# Role names as they appear in common datasets, per role (`roles:` in the config replaces this).
DEFAULT_ROLES = {
    "system": ["system"],
    "user": ["user", "human"],
    "assistant": ["assistant", "gpt", "model", "bot"],
    "tool": ["tool", "function", "ipython"],
}
GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    training: bool | None  # per-message override of roles_to_train


def field_names(ds: DatasetConfig) -> tuple[str, ...]:
    return (ds.field_messages,)


def _role_table(ds: DatasetConfig) -> dict[str, str]:
    table = ds.roles or DEFAULT_ROLES
    return {alias: role for role, aliases in table.items() for alias in [role, *aliases]}


def messages(row: dict[str, Any], ds: DatasetConfig) -> list[Message]:
    """The row's messages with roles mapped to the template's names. Raises FieldError."""
    name = ds.field_messages
    raw = row.get(name)
    if raw is None:
        raise FieldError(name, "is missing or null (a list of messages is expected)")
    if not isinstance(raw, list):
        raise FieldError(name, f"must be a list of messages, got {type(raw).__name__}")
    if not raw:
        raise FieldError(name, "is an empty conversation")
    keys = {"role": "role", "content": "content", **(ds.message_property_mappings or {})}
    roles = _role_table(ds)
    out = []
    for i, msg in enumerate(raw):
        where = f"{name}[{i}]"
        if not isinstance(msg, dict):
            raise FieldError(where, f"must be an object with {keys['role']} and {keys['content']}, got {type(msg).__name__}")
        role, content = msg.get(keys["role"]), msg.get(keys["content"])
        if not isinstance(role, str):
            raise FieldError(f"{where}.{keys['role']}", "is missing or not a string")
        if role not in roles:
            known = ", ".join(sorted(roles))
            raise FieldError(f"{where}.{keys['role']}", f"has unknown role {role!r} (known: {known}; map others with `roles:`)")
        if not isinstance(content, str):
            raise FieldError(f"{where}.{keys['content']}", "is missing or not a string")
        training = msg.get(ds.message_field_training)
        if training is not None and not isinstance(training, bool):
            raise FieldError(f"{where}.{ds.message_field_training}", f"must be true or false, got {training!r}")
        out.append(Message(roles[role], content, training))
    return out


def check(row: dict[str, Any], ds: DatasetConfig) -> None:
    messages(row, ds)


def is_trained(msg: Message, ds: DatasetConfig) -> bool:
    return msg.training if msg.training is not None else msg.role in ds.roles_to_train


def render(msgs: list[Message], tokenizer: Any, template: str, field: str) -> str:
    try:
        return tokenizer.apply_chat_template(
            [{"role": m.role, "content": m.content} for m in msgs], chat_template=template, tokenize=False
        )
    except Exception as err:  # noqa: BLE001 - jinja raises anything the template author wrote
        raise FieldError(field, f"cannot be rendered by the chat template: {err}") from None


def locate(text: str, msgs: list[Message], field: str) -> list[tuple[int, int] | None]:
    """Character span of each message's content in the rendered text (None for empty ones)."""
    spans: list[tuple[int, int] | None] = [None] * len(msgs)
    claimed: list[tuple[int, int]] = []
    groups: dict[str, list[int]] = {}
    for i, m in enumerate(msgs):
        if m.content.strip():
            groups.setdefault(m.content, []).append(i)

    def free(start: int, end: int) -> bool:
        return all(end <= s or start >= e for s, e in claimed)

    for content in sorted(groups, key=len, reverse=True):
        idxs = groups[content]
        found: list[int] = []
        for needle in dict.fromkeys([content, content.strip()]):  # verbatim, then as a trimming template writes it
            found = [at for at in _occurrences(text, needle) if free(at, at + len(needle))]
            if len(found) == len(idxs):
                break
        if len(found) != len(idxs):
            first = idxs[0]
            what = (
                "is not in the rendered conversation: the chat template changed, moved or dropped it"
                if not found
                else f"appears {len(found)} times in the rendered conversation (expected {len(idxs)}), "
                "so its tokens cannot be told apart from template text"
            )
            raise FieldError(f"{field}[{first}].content", f"({msgs[first].role}) {what}")
        for i, start in zip(idxs, found):
            spans[i] = (start, start + len(needle))
            claimed.append(spans[i])
    previous_end, previous = 0, None
    for i, span in enumerate(spans):
        if span is None:
            continue
        if span[0] < previous_end:
            raise FieldError(
                f"{field}[{i}].content",
                f"({msgs[i].role}) comes before message {previous} in the rendering: the chat template moves messages, "
                "so their tokens cannot be located",
            )
        previous_end, previous = span[1], i
    return spans


def _occurrences(text: str, needle: str) -> list[int]:
    """Start of every non-overlapping occurrence of `needle` in `text`, left to right."""
    found, at = [], text.find(needle)
    while at >= 0:
        found.append(at)
        at = text.find(needle, at + len(needle))
    return found


def _special_ids(tokenizer: Any) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    ids.update(i for i, tok in decoder.items() if getattr(tok, "special", False))
    return ids


def _uses_markers(msgs: list[Message], ds: DatasetConfig, template: str, train_on_inputs: bool) -> bool:
    return bool(
        GENERATION_MARKER.search(template)
        and ds.roles_to_train == ["assistant"]
        and all(m.training is None for m in msgs)
        and not train_on_inputs
    )


def encode(
    row: dict[str, Any], ds: DatasetConfig, tokenizer: Any, template: str, train_on_inputs: bool
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one conversation. Raises FieldError."""
    result = encode_many([row], ds, tokenizer, template, train_on_inputs)[0]
    if isinstance(result, FieldError):
        raise result
    return result


def encode_many(
    rows: list[dict[str, Any]], ds: DatasetConfig, tokenizer: Any, template: str, train_on_inputs: bool
) -> list[tuple[list[int], list[int]] | FieldError]:
    """(input_ids, labels) of each conversation, or the FieldError of a bad one.

    Renders and locates row by row, then tokenizes all renderings in one batched call of the
    fast tokenizer (with offsets)."""
    field = ds.field_messages
    results: list[tuple[list[int], list[int]] | FieldError] = []
    pending: list[tuple[int, str, list[Message], list[tuple[int, int] | None]]] = []
    for row in rows:
        try:
            msgs = messages(row, ds)
            if _uses_markers(msgs, ds, template, train_on_inputs):
                results.append(_encode_with_markers(msgs, tokenizer, template, field))
                continue
            text = render(msgs, tokenizer, template, field)
            spans = locate(text, msgs, field)
        except FieldError as err:
            results.append(err)
            continue
        pending.append((len(results), text, msgs, spans))
        results.append(FieldError(field, "not encoded"))  # replaced below
    if not pending:
        return results
    enc = tokenizer([p[1] for p in pending], add_special_tokens=False, return_offsets_mapping=True)
    special = _special_ids(tokenizer) if ds.train_on_eos != "none" else set()
    for (at, _, msgs, spans), ids, offsets in zip(pending, enc["input_ids"], enc["offset_mapping"]):
        ids = list(ids)
        if train_on_inputs:
            results[at] = (ids, list(ids))
            continue
        starts, ends = [o[0] for o in offsets], [o[1] for o in offsets]
        ordered = _non_decreasing(starts) and _non_decreasing(ends)
        trained = [s for m, s in zip(msgs, spans) if s is not None and is_trained(m, ds)]
        labels = _content_labels(ids, starts, ends, ordered, trained)
        for t in _end_tokens(msgs, spans, ids, starts, ordered, special, ds):
            labels[t] = ids[t]
        results[at] = (ids, labels)
    return results


def _content_labels(ids: list[int], starts: list[int], ends: list[int], ordered: bool,
                    trained: list[tuple[int, int]]) -> list[int]:
    """Each token's id where any of its characters lies in a trained span, else IGNORE.
    `ordered`: token start and end offsets are non-decreasing (as fast tokenizers give them)."""
    labels = [IGNORE] * len(ids)
    if ordered:
        # The tokens overlapping [s, e) are then one run: from the first ending after s
        # to the last starting before e.
        for s, e in trained:
            for t in range(bisect_right(ends, s), bisect_left(starts, e)):
                labels[t] = ids[t]
        return labels
    for t, (start, end) in enumerate(zip(starts, ends)):  # offsets out of order (rare): check every token
        if any(start < e and end > s for s, e in trained):
            labels[t] = ids[t]
    return labels


def _non_decreasing(values: list[int]) -> bool:
    return values == sorted(values)


def _end_tokens(msgs, spans, ids, starts: list[int], ordered: bool, special: set[int], ds: DatasetConfig) -> list[int]:
    """Token positions of the end-of-turn tokens that `train_on_eos` trains."""
    if ds.train_on_eos == "none":
        return []
    located = [i for i, s in enumerate(spans) if s is not None]
    ends: dict[int, int] = {}
    for k, i in enumerate(located):
        after = spans[i][1]
        before = spans[located[k + 1]][0] if k + 1 < len(located) else float("inf")
        # the first special token starting at or after the content's end, before the next message
        for t in range(bisect_left(starts, after) if ordered else 0, len(ids)):
            if starts[t] >= before:
                break
            if starts[t] >= after and ids[t] in special:
                ends[i] = t
                break
    trained = [i for i in located if is_trained(msgs[i], ds)]
    if ds.train_on_eos == "all":
        chosen = located
    elif ds.train_on_eos == "last":
        chosen = trained[-1:]
    else:  # turn
        chosen = trained
    return [ends[i] for i in chosen if i in ends]


def _encode_with_markers(msgs: list[Message], tokenizer: Any, template: str, field: str) -> tuple[list[int], list[int]]:
    try:
        out = tokenizer.apply_chat_template(
            [{"role": m.role, "content": m.content} for m in msgs],
            chat_template=template,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
        )
    except Exception as err:  # noqa: BLE001
        raise FieldError(field, f"cannot be rendered by the chat template: {err}") from None
    ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
    return ids, [tok if m else IGNORE for tok, m in zip(ids, mask)]


def prompt(row: dict[str, Any], ds: DatasetConfig, tokenizer: Any, template: str) -> str:
    """The rendered conversation up to the last assistant turn, ready for generation."""
    msgs = messages(row, ds)
    while msgs and msgs[-1].role == "assistant":
        msgs = msgs[:-1]
    return tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in msgs], chat_template=template, tokenize=False,
        add_generation_prompt=True,
    )
