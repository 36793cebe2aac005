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
     SmolLM2 injects a default system prompt whose text a message may repeat) and the row
     is an error naming the message. A message's reasoning (`field_thinking`, given to the
     template as `template_thinking_key`) is located the same way, but a template may leave
     it out (Qwen3 drops the reasoning of earlier turns): then there is nothing to train.
  3. The rendering is tokenized with offsets. A token is trained when any of its
     characters lies in a trained message: from its reasoning (when rendered) to the end of
     its content, so the template's text between the two trains too (a token straddling
     template text and trained content is trained).
  4. End-of-turn tokens: the first end-of-turn token after a message's content, before the
     next message. Which tokens end a turn: `eot_tokens` when set, else any special token
     of the tokenizer (`<|im_end|>`, `<|eot_id|>`, `</s>`, `<end_of_turn>`, ...). Which of
     them train follows `train_on_eot` (default: `train_on_eos`): `turn` (those ending
     trained messages), `all`, `last` (only the last trained message's), `none`. The EOS
     token follows `train_on_eos` where it is not itself an end-of-turn token.
  As in Axolotl, a row's own `system` field opens the conversation when its messages have no
  system message, `drop_system_message` leaves the first system message out, and
  `roles_to_train` may use the data's role names (gpt) too. Messages with `tool_calls` are
  refused (tuner gives templates role, content and reasoning only).
  Templates with `{% generation %}` markers use the markers instead (when only the
  assistant role trains, no message overrides it, and no reasoning or `eot_tokens` is
  involved): transformers' assistant mask decides.
  With `tokenizer_use_mistral_common: true` there is no Jinja template: mistral-common encodes
  each conversation itself, and its turns are located as tuner.data.mistral_common describes.
"""

from __future__ import annotations

import logging
import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import Any

from tuner.config.dataset_types import default_roles
from tuner.config.schema import DatasetConfig
from tuner.data.formats.base import DatasetFormat, EncodeContext, EncodeResult, FieldError, register
from tuner.data import mistral_common
from tuner.data.labels import IGNORE
from tuner.errors import UserError

log = logging.getLogger("tuner")

# Role names as they appear in common datasets, per role (`roles:` in the config replaces this).
DEFAULT_ROLES = default_roles()
ROW_SYSTEM = "system"  # a row field Axolotl reads as the system prompt when the messages have none
GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")
# Axolotl's split_thinking: reasoning written inside the content, and an optional answer wrapper.
THINKING_TAGS = [("<think>", "</think>"), ("<reasoning>", "</reasoning>"), ("<|begin_of_thought|>", "<|end_of_thought|>")]
ANSWER_TAGS = [("<|begin_of_solution|>", "<|end_of_solution|>")]

Span = tuple[int, int]


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    training: bool | None  # per-message override of roles_to_train
    thinking: str | None = None  # the message's reasoning, rendered by templates that show it
    index: int | None = None  # its position in the row's list (None: the row's `system` field)

    def where(self, field: str) -> str:
        return f"{field}[{self.index}]" if self.index is not None else ROW_SYSTEM


def _role_table(ds: DatasetConfig) -> dict[str, str]:
    table = ds.roles or DEFAULT_ROLES
    return {alias: role for role, aliases in table.items() for alias in [role, *aliases]}


def _split_thinking(content: str) -> tuple[str, str | None]:
    """(answer, reasoning) of content that writes its reasoning inline (`split_thinking`)."""
    for opening, closing in THINKING_TAGS:
        start, end = content.find(opening), content.find(closing)
        if start >= 0 and end >= 0:
            thinking = content[start + len(opening):end].strip()
            rest = content[end + len(closing):].lstrip()
            for a_open, a_close in ANSWER_TAGS:
                a_start, a_end = rest.find(a_open), rest.find(a_close)
                if a_start >= 0 and a_end >= 0:
                    return rest[a_start + len(a_open):a_end].strip(), thinking
            return rest, thinking
    return content, None


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
    thinking_key = keys.get(ds.template_thinking_key, ds.field_thinking)
    roles = _role_table(ds)
    out = []
    system = row.get(ROW_SYSTEM)
    if isinstance(system, str) and system and not _is_system(raw[0], keys, roles):
        out.append(Message("system", system, None))  # as Axolotl: a row's `system` field opens the conversation
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
        if msg.get("tool_calls"):
            raise FieldError(f"{where}.tool_calls", "tool calls are not supported yet (tuner gives the template each "
                                                    "message's role, content and reasoning only)")
        training = msg.get(ds.message_field_training)
        if training is not None and not isinstance(training, bool):
            raise FieldError(f"{where}.{ds.message_field_training}", f"must be true or false, got {training!r}")
        thinking = msg.get(thinking_key)
        if thinking is not None and not isinstance(thinking, str):
            raise FieldError(f"{where}.{thinking_key}", "must be a string (the message's reasoning)")
        role = roles[role]
        if ds.split_thinking and role == "assistant" and thinking is None:
            content, thinking = _split_thinking(content)
        out.append(Message(role, content, training, thinking, i))
    if ds.drop_system_message and out[0].role == "system":
        out = out[1:]
        if not out:
            raise FieldError(name, "holds only a system message, and drop_system_message drops it")
    return out


def _is_system(msg: Any, keys: dict[str, str], roles: dict[str, str]) -> bool:
    return isinstance(msg, dict) and roles.get(msg.get(keys["role"])) == "system"


def trained_roles(ds: DatasetConfig) -> set[str]:
    """The template's role names of `roles_to_train`, which may also use the data's names (gpt)."""
    table = _role_table(ds)
    return {table.get(r, r) for r in ds.roles_to_train}


def is_trained(msg: Message, roles: set[str]) -> bool:
    return msg.training if msg.training is not None else msg.role in roles


def _as_dicts(msgs: list[Message], ds: DatasetConfig) -> list[dict[str, str]]:
    out = []
    for m in msgs:
        d = {"role": m.role, "content": m.content}
        if m.thinking is not None:
            d[ds.template_thinking_key] = m.thinking
        out.append(d)
    return out


def render(msgs: list[Message], tokenizer: Any, template: str, field: str, ds: DatasetConfig | None = None) -> str:
    dicts = _as_dicts(msgs, ds) if ds is not None else [{"role": m.role, "content": m.content} for m in msgs]
    try:
        return tokenizer.apply_chat_template(dicts, chat_template=template, tokenize=False)
    except Exception as err:  # noqa: BLE001 - jinja raises anything the template author wrote
        raise FieldError(field, f"cannot be rendered by the chat template: {err}") from None


@dataclass
class Located:
    """Where each message's content (and reasoning, when rendered) lies in the rendering."""

    content: list[Span | None]
    thinking: list[Span | None]

    def first(self, i: int) -> Span | None:
        return self.thinking[i] or self.content[i]

    def trained_span(self, i: int) -> Span | None:
        """From the reasoning (when rendered) to the end of the content."""
        head, tail = self.first(i), self.content[i] or self.thinking[i]
        return None if head is None or tail is None else (head[0], tail[1])


def locate(text: str, msgs: list[Message], field: str, thinking_field: str = "reasoning_content") -> Located:
    """Character spans of each message's content and reasoning in the rendered text (None for
    empty ones, and for reasoning the template does not show). Raises FieldError."""
    found_at = Located([None] * len(msgs), [None] * len(msgs))
    claimed: list[Span] = []
    # (text, optional) -> [(message, kind)]: reasoning is optional, content is not
    groups: dict[tuple[str, bool], list[tuple[int, str]]] = {}
    for i, m in enumerate(msgs):
        if m.thinking is not None and m.thinking.strip():
            groups.setdefault((m.thinking, True), []).append((i, "thinking"))
        if m.content.strip():
            groups.setdefault((m.content, False), []).append((i, "content"))

    def free(start: int, end: int) -> bool:
        return all(end <= s or start >= e for s, e in claimed)

    for content, optional in sorted(groups, key=lambda k: (len(k[0]), not k[1]), reverse=True):
        members = groups[(content, optional)]
        found: list[int] = []
        for needle in dict.fromkeys([content, content.strip()]):  # verbatim, then as a trimming template writes it
            found = [at for at in _occurrences(text, needle) if free(at, at + len(needle))]
            if len(found) == len(members):
                break
        if optional and not found:
            continue  # the template does not show this reasoning
        if len(found) != len(members):
            first, kind = members[0]
            what = (
                "is not in the rendered conversation: the chat template changed, moved or dropped it"
                if not found
                else f"appears {len(found)} times in the rendered conversation (expected {len(members)}), "
                "so its tokens cannot be told apart from template text"
            )
            name = "content" if kind == "content" else thinking_field
            raise FieldError(f"{msgs[first].where(field)}.{name}", f"({msgs[first].role}) {what}")
        for (i, kind), start in zip(members, found):
            span = (start, start + len(needle))
            getattr(found_at, kind)[i] = span
            claimed.append(span)
    previous_end, previous = 0, None
    for i in range(len(msgs)):
        for kind in ("thinking", "content"):
            span = getattr(found_at, kind)[i]
            if span is None:
                continue
            if span[0] < previous_end:
                name = "content" if kind == "content" else thinking_field
                raise FieldError(
                    f"{msgs[i].where(field)}.{name}",
                    f"({msgs[i].role}) comes before message {msgs[previous].index} in the rendering: the chat template moves "
                    "messages, so their tokens cannot be located",
                )
            previous_end, previous = span[1], i
    return found_at


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


def eot_token_ids(tokenizer: Any, eot_tokens: tuple[str, ...], template: str | None) -> set[int]:
    """The ids of `eot_tokens`, each of which must be one token. Raises UserError."""
    ids = set()
    for token in eot_tokens:
        found = tokenizer.encode(token, add_special_tokens=False)
        if len(found) != 1:
            raise UserError(
                f"eot_tokens: {token!r} is {len(found)} tokens for this tokenizer ({found[:8]}), so it cannot mark the "
                "end of a turn; add it to the vocabulary with `tokens: [...]` or `special_tokens`, or remove it"
            )
        if template is not None and token not in template:
            log.warning("eot_tokens: %r does not appear in the chat template, so no turn ends with it", token)
        ids.add(found[0])
    return ids


def _uses_markers(msgs: list[Message], ds: DatasetConfig, template: str, ctx: EncodeContext) -> bool:
    return bool(
        GENERATION_MARKER.search(template)
        and ds.roles_to_train == ["assistant"]
        and all(m.training is None and m.thinking is None for m in msgs)
        and not ctx.train_on_inputs
        and ctx.eot_tokens is None
    )


@dataclass(frozen=True)
class _Ends:
    """Which tokens end a turn, and which option trains them."""

    eot_ids: set[int] | None  # None: any special token
    eot_option: str
    eos_id: int | None
    eos_option: str


def _ends(ds: DatasetConfig, ctx: EncodeContext) -> _Ends:
    eot_option = ds.train_on_eot or ds.train_on_eos
    eos = ctx.tokenizer.eos_token_id
    if ctx.eot_tokens is None:
        return _Ends(None, eot_option, eos, ds.train_on_eos)
    ids = eot_token_ids(ctx.tokenizer, ctx.eot_tokens, ctx.template)
    if eos in ids and eot_option != ds.train_on_eos:
        raise UserError(
            f"datasets: train_on_eos is {ds.train_on_eos} but train_on_eot is {eot_option}, and the EOS token "
            f"{ctx.tokenizer.eos_token!r} is one of eot_tokens, so it would have to train both ways; make them equal"
        )
    return _Ends(ids, eot_option, eos, ds.train_on_eos)


def encode_many(
    rows: list[dict[str, Any]], ds: DatasetConfig, tokenizer: Any, template: str, train_on_inputs: bool,
    eot_tokens: tuple[str, ...] | None = None,
) -> list[EncodeResult]:
    """(input_ids, labels) of each conversation, or the FieldError of a bad one."""
    return FORMAT.encode_many(rows, ds, EncodeContext(tokenizer, train_on_inputs, template, eot_tokens))


def encode(
    row: dict[str, Any], ds: DatasetConfig, tokenizer: Any, template: str, train_on_inputs: bool,
    eot_tokens: tuple[str, ...] | None = None,
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one conversation. Raises FieldError."""
    result = encode_many([row], ds, tokenizer, template, train_on_inputs, eot_tokens)[0]
    if isinstance(result, FieldError):
        raise result
    return result


class ChatTemplate(DatasetFormat):
    name = "chat_template"
    chat = True

    def field_names(self, ds: DatasetConfig | None) -> tuple[str, ...]:
        assert ds is not None
        return (ds.field_messages, ROW_SYSTEM)

    def check(self, row: dict[str, Any], ds: DatasetConfig | None) -> None:
        assert ds is not None
        messages(row, ds)

    def encode_many(self, rows: list[dict[str, Any]], ds: DatasetConfig | None, ctx: EncodeContext) -> list[EncodeResult]:
        """Renders and locates row by row, then tokenizes all renderings in one batched call of
        the fast tokenizer (with offsets)."""
        assert ds is not None
        if mistral_common.is_mistral(ctx.tokenizer):
            return [_encode_mistral(row, ds, ctx) for row in rows]
        assert ctx.template is not None
        template, tokenizer, field = ctx.template, ctx.tokenizer, ds.field_messages
        thinking_field = (ds.message_property_mappings or {}).get(ds.template_thinking_key, ds.field_thinking)
        results: list[EncodeResult] = []
        pending: list[tuple[int, str, list[Message], Located]] = []
        for row in rows:
            try:
                msgs = messages(row, ds)
                if _uses_markers(msgs, ds, template, ctx):
                    results.append(_encode_with_markers(msgs, tokenizer, template, field))
                    continue
                text = render(msgs, tokenizer, template, field, ds)
                spans = locate(text, msgs, field, thinking_field)
            except FieldError as err:
                results.append(err)
                continue
            pending.append((len(results), text, msgs, spans))
            results.append(FieldError(field, "not encoded"))  # replaced below
        if not pending:
            return results
        enc = tokenizer([p[1] for p in pending], add_special_tokens=False, return_offsets_mapping=True)
        ends = _ends(ds, ctx)
        roles = trained_roles(ds)
        special = _special_ids(tokenizer) if ends.eot_ids is None else set()
        for (at, _, msgs, spans), ids, offsets in zip(pending, enc["input_ids"], enc["offset_mapping"]):
            ids = list(ids)
            if ctx.train_on_inputs:
                results[at] = (ids, list(ids))
                continue
            starts, stops = [o[0] for o in offsets], [o[1] for o in offsets]
            ordered = _non_decreasing(starts) and _non_decreasing(stops)
            trained = [spans.trained_span(i) for i, m in enumerate(msgs) if is_trained(m, roles)]
            labels = _content_labels(ids, starts, stops, ordered, [s for s in trained if s is not None])
            for t in _end_tokens(msgs, spans, ids, starts, ordered, roles, ends, special):
                labels[t] = ids[t]
            results[at] = (ids, labels)
        return results


def _encode_mistral(row: dict[str, Any], ds: DatasetConfig, ctx: EncodeContext) -> EncodeResult:
    """`tokenizer_use_mistral_common`: mistral-common encodes the conversation (tuner.data.mistral_common)."""
    field = ds.field_messages
    try:
        msgs = messages(_from_chunks(row, ds), ds)
    except FieldError as err:
        return err
    roles = trained_roles(ds)
    turns = [mistral_common.Turn(m.role, m.content, m.thinking, is_trained(m, roles), m.where(field)) for m in msgs]
    try:
        return mistral_common.encode_chat(ctx.tokenizer, turns, ds.train_on_eos, ctx.train_on_inputs)
    except mistral_common.TurnError as err:
        return FieldError(err.where or field, str(err))


def _from_chunks(row: dict[str, Any], ds: DatasetConfig) -> dict[str, Any]:
    """Axolotl's multi-content messages (`content: [{type: thinking, thinking: ...}, {type: text, text: ...}]`,
    as its Magistral / Ministral thinking examples write them) as a content string and the message's
    reasoning, which mistral-common encodes as a thinking chunk before the text. Raises FieldError."""
    raw = row.get(ds.field_messages)
    if not isinstance(raw, list) or not any(isinstance(m, dict) and isinstance(m.get("content"), list) for m in raw):
        return row
    keys = {"content": "content", **(ds.message_property_mappings or {})}
    thinking_key = keys.get(ds.template_thinking_key, ds.field_thinking)
    out = []
    for i, msg in enumerate(raw):
        chunks = msg.get(keys["content"]) if isinstance(msg, dict) else None
        if not isinstance(chunks, list):
            out.append(msg)
            continue
        where = f"{ds.field_messages}[{i}].{keys['content']}"
        kinds = [c.get("type") if isinstance(c, dict) else None for c in chunks]
        if kinds not in (["text"], ["thinking"], ["thinking", "text"]):
            raise FieldError(where, f"has content chunks of types {kinds}; tuner reads one text chunk, after one "
                                    "thinking chunk or alone")
        texts = [c.get("text") for c in chunks if c["type"] == "text"]
        if not all(isinstance(t, str) for t in texts) or any(not isinstance(c.get("thinking"), str)
                                                              for c in chunks if c["type"] == "thinking"):
            raise FieldError(where, "has a chunk without its text (text chunks: text, thinking chunks: thinking)")
        msg = {**msg, keys["content"]: "".join(texts)}
        if kinds and kinds[0] == "thinking":
            msg[thinking_key] = chunks[0]["thinking"]
        out.append(msg)
    return {**row, ds.field_messages: out}


def _content_labels(ids: list[int], starts: list[int], ends: list[int], ordered: bool,
                    trained: list[Span]) -> list[int]:
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


def _first_after(spans: Located, ids: list[int], starts: list[int], ordered: bool, wanted: set[int]) -> dict[int, int]:
    """Message index -> position of the first token in `wanted` starting at or after the end of
    the message, before the next message begins."""
    located = [i for i in range(len(spans.content)) if spans.first(i) is not None]
    found: dict[int, int] = {}
    for k, i in enumerate(located):
        after = spans.trained_span(i)[1]
        before = spans.first(located[k + 1])[0] if k + 1 < len(located) else float("inf")
        for t in range(bisect_left(starts, after) if ordered else 0, len(ids)):
            if starts[t] >= before:
                break
            if starts[t] >= after and ids[t] in wanted:
                found[i] = t
                break
    return found


def _chosen(option: str, located: list[int], trained: list[int]) -> list[int]:
    """The messages whose end token trains under a train_on_eos / train_on_eot value."""
    return {"all": located, "last": trained[-1:], "turn": trained, "none": []}[option]


def _end_tokens(msgs, spans: Located, ids, starts: list[int], ordered: bool, roles: set[str], ends: _Ends,
                special: set[int]) -> list[int]:
    """Token positions of the end-of-turn (and EOS) tokens that train."""
    if ends.eot_option == "none" and ends.eos_option == "none":
        return []
    located = [i for i in range(len(msgs)) if spans.first(i) is not None]
    trained = [i for i in located if is_trained(msgs[i], roles)]
    out = []
    if ends.eot_ids is None:  # any special token ends a turn; EOS follows train_on_eos
        chosen = {option: set(_chosen(option, located, trained)) for option in {ends.eos_option, ends.eot_option}}
        for i, t in _first_after(spans, ids, starts, ordered, special).items():
            if i in chosen[ends.eos_option if ids[t] == ends.eos_id else ends.eot_option]:
                out.append(t)
        return out
    for wanted, option in ((ends.eot_ids, ends.eot_option), ({ends.eos_id} - ends.eot_ids, ends.eos_option)):
        if not wanted or option == "none":
            continue
        found = _first_after(spans, ids, starts, ordered, wanted)
        out += [found[i] for i in _chosen(option, located, trained) if i in found]
    return out


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


FORMAT = register(ChatTemplate())


def check(row: dict[str, Any], ds: DatasetConfig) -> None:
    FORMAT.check(row, ds)
