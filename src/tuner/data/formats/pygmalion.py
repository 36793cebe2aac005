"""`type: pygmalion`: Pygmalion's role-play conversations, tokenized as Axolotl does.

Rows hold `conversations: [{role: system | human | bot, value: ...}]`. Each message is
written with its role marker and tokenized on its own: the system persona
(`<|system|>Persona: ...`, a trailing `\\n<START>` removed) keeps the tokenizer's BOS and
is not trained; a human turn (`<|user|> ...`) is not trained; a bot turn (`<|model|> ...`)
ends with EOS and trains, except its `<|model|>` marker. Human and bot pieces lose a
leading BOS, as in Axolotl.
"""

from __future__ import annotations

from typing import Any

from tuner.config.schema import DatasetConfig
from tuner.data.formats.base import DatasetFormat, EncodeContext, EncodeResult, FieldError, register
from tuner.data.labels import IGNORE

MARKERS = {"system": "<|system|>", "human": "<|user|>", "bot": "<|model|>"}


def pieces(row: dict[str, Any]) -> list[tuple[str, str]]:
    """(role, text) of each message, as Axolotl writes it. Raises FieldError."""
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise FieldError("conversations", "must be a non-empty list of {role, value} messages")
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise FieldError(f"conversations[{i}]", "must be an object with role and value")
        role, value = turn.get("role"), turn.get("value")
        if role not in MARKERS:
            raise FieldError(f"conversations[{i}].role", f"is {role!r}; pygmalion roles are system, human, bot")
        if not isinstance(value, str):
            raise FieldError(f"conversations[{i}].value", "is missing or not a string")
        if role == "system":
            value = value[:-len("\n<START>")] if value.endswith("\n<START>") else value
            out.append((role, MARKERS[role] + "Persona: " + value.strip()))
        else:
            out.append((role, MARKERS[role] + " " + value.strip()))
    return out


class Pygmalion(DatasetFormat):
    name = "pygmalion"

    def field_names(self, ds: DatasetConfig | None) -> tuple[str, ...]:
        return ("conversations",)

    def check(self, row: dict[str, Any], ds: DatasetConfig | None) -> None:
        pieces(row)

    def encode_many(self, rows: list[dict[str, Any]], ds: DatasetConfig | None, ctx: EncodeContext) -> list[EncodeResult]:
        tok = ctx.tokenizer
        bos, eos = tok.bos_token_id, tok.eos_token_id
        marker = tok(MARKERS["bot"])["input_ids"]
        marker = marker[1:] if marker and marker[0] == bos else marker
        parsed: list[list[tuple[str, str]] | FieldError] = []
        for row in rows:
            try:
                parsed.append(pieces(row))
            except FieldError as err:
                parsed.append(err)
        texts = [text for p in parsed if not isinstance(p, FieldError) for _, text in p]
        encoded = iter(tok(texts)["input_ids"] if texts else [])
        out: list[EncodeResult] = []
        for p in parsed:
            if isinstance(p, FieldError):
                out.append(p)
                continue
            ids: list[int] = []
            labels: list[int] = []
            for role, _ in p:
                piece = list(next(encoded))
                if role != "system" and piece and piece[0] == bos:
                    piece = piece[1:]
                if role == "bot":
                    if piece and piece[-1] != eos:
                        piece.append(eos)
                    trained = [IGNORE] * len(marker) + piece[len(marker):]
                else:
                    trained = [IGNORE] * len(piece)
                ids += piece
                labels += piece if ctx.train_on_inputs else trained
            out.append((ids, labels))
        return out


FORMAT = register(Pygmalion())
