"""Segments -> `input_ids`, `attention_mask`, `labels` (-100 where nothing is trained).

Rules, the same for every segment format:
  * the first segment is tokenized with the tokenizer's special tokens (a BOS where the
    tokenizer adds one), later segments without, and the pieces are concatenated: the
    boundary between prompt and completion is a token boundary, as in Axolotl;
  * a trained segment's tokens keep their ids as labels, others get -100
    (`train_on_inputs: true` trains every token);
  * EOS is appended (unless the text already ends with it) and trained whenever the last
    segment is (input_output rows are taken as written: no special tokens, no EOS);
  * rows longer than `sequence_len` follow `excess_length_strategy` (drop | truncate |
    raise | split, see `split_row`); rows shorter than `min_sample_len` tokens (Axolotl's filter, before any
    truncation) and rows with no trained token left are dropped; all are counted.
Labels are built here, once. The training loop never re-derives a mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tuner.data.labels import IGNORE, Segment, trained_count

KEPT, TOO_LONG, NOTHING_TO_TRAIN = 0, 1, 2
TOO_SHORT = 4  # (3 is the pipeline's INVALID)

__all__ = ["IGNORE", "KEPT", "NOTHING_TO_TRAIN", "TOO_LONG", "TOO_SHORT", "Segment", "TokenizeSettings", "encode_prefixed",
           "encode_segments", "finish_row", "split_row", "tokenize_rows"]


@dataclass(frozen=True)
class TokenizeSettings:
    sequence_len: int
    excess_length_strategy: str  # drop | truncate | raise | split
    train_on_inputs: bool
    min_sample_len: int | None = None  # rows with fewer tokens are dropped (TOO_SHORT)


def encode_segments(
    rows: list[list[Segment]],
    tokenizer: Any,
    train_on_inputs: bool,
    special_tokens_first: bool = True,
    append_eos: bool = True,
    eos_count: int = 1,
) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) of each row of segments, in batched calls into the fast tokenizer.

    `eos_count`: how many EOS tokens end a row (Axolotl's metharme appends three; one of
    them may already be the text's own)."""
    firsts = [segs[0].text for segs in rows]
    rest = [seg.text for segs in rows for seg in segs[1:]]
    first_ids = tokenizer(firsts, add_special_tokens=special_tokens_first)["input_ids"] if firsts else []
    rest_ids = tokenizer(rest, add_special_tokens=False)["input_ids"] if rest else []
    eos = tokenizer.eos_token_id

    out = []
    cursor = 0
    for segs, head in zip(rows, first_ids):
        ids: list[int] = []
        labels: list[int] = []
        pieces = [head, *rest_ids[cursor : cursor + len(segs) - 1]]
        cursor += len(segs) - 1
        for seg, piece in zip(segs, pieces):
            ids.extend(piece)
            trained = seg.train or train_on_inputs
            labels.extend(piece if trained else [IGNORE] * len(piece))
        if append_eos:
            missing = eos_count - (1 if ids and ids[-1] == eos else 0)
            ids.extend([eos] * missing)
            labels.extend([eos if (segs[-1].train or train_on_inputs) else IGNORE] * missing)
        out.append((ids, labels))
    return out


def encode_prefixed(rows: list[tuple[str, str]], tokenizer: Any, train_on_inputs: bool) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) of (prompt, answer) rows tokenized as one text each, EOS appended
    (unless the text ends with it): the first tokens, as many as the prompt has when tokenized
    alone, are not trained. Axolotl's reflection type tokenizes this way."""
    if not rows:
        return []
    whole = tokenizer([p + a for p, a in rows])["input_ids"]
    prompts = tokenizer([p for p, _ in rows])["input_ids"]
    eos = tokenizer.eos_token_id
    out = []
    for ids, prompt in zip(whole, prompts):
        ids = list(ids) if ids and ids[-1] == eos else [*ids, eos]
        out.append((ids, list(ids) if train_on_inputs else [IGNORE] * len(prompt) + ids[len(prompt):]))
    return out


def tokenize_rows(
    rows: list[list[Segment]],
    tokenizer: Any,
    settings: TokenizeSettings,
    special_tokens_first: bool = True,
    append_eos: bool = True,
) -> list[dict[str, Any]]:
    """Tokenize many rows at once and apply the length policy (see `finish_row`).

    Returns one dict per row with input_ids, attention_mask, labels and `status`
    (KEPT, TOO_LONG or NOTHING_TO_TRAIN). Under `raise` the caller raises for TOO_LONG,
    naming the row.
    """
    encoded = encode_segments(rows, tokenizer, settings.train_on_inputs, special_tokens_first, append_eos)
    return [finish_row(ids, labels, settings) for ids, labels in encoded]


def finish_row(ids: list[int], labels: list[int], settings: TokenizeSettings) -> dict[str, Any]:
    """Apply the length policy and the nothing-to-train rule to one tokenized row."""
    status, truncated = KEPT, False
    if settings.min_sample_len and len(ids) < settings.min_sample_len:
        status = TOO_SHORT
    elif len(ids) > settings.sequence_len:
        if settings.excess_length_strategy == "truncate":
            ids, labels = ids[: settings.sequence_len], labels[: settings.sequence_len]
            truncated = True
        else:
            status = TOO_LONG
    if status == KEPT and trained_count(labels) == 0:
        status = NOTHING_TO_TRAIN
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels, "status": status, "truncated": truncated}


def split_row(ids: list[int], labels: list[int], sequence_len: int, overlap: int = 0) -> list[tuple[list[int], list[int]]]:
    """`excess_length_strategy: split`: one long document as pieces of at most `sequence_len` tokens.

    Piece k starts `k * (sequence_len - overlap)` tokens in; the last piece ends at the
    document's end (no piece lies wholly inside the one before). The first `overlap` tokens of
    every piece after the first repeat the end of the piece before: they are context for the
    piece's new tokens and get label IGNORE, so every token of the document is trained once
    (Axolotl's completion type trains the overlap twice). The BOS stays with the first piece
    and the EOS with the last. Each piece is a document of its own: unpacked, its first token
    is a row's first (never trained); packed, pack.packed_batch gives every document's first
    token IGNORE, so no piece is trained as the continuation of the document before it.
    """
    step = sequence_len - overlap
    if step < 1:
        raise ValueError(f"overlap {overlap} must be less than sequence_len {sequence_len}")
    pieces = []
    start = 0
    while True:
        end = min(start + sequence_len, len(ids))
        piece_labels = labels[start:end]
        if start:
            piece_labels = [IGNORE] * overlap + piece_labels[overlap:]
        pieces.append((ids[start:end], piece_labels))
        if end == len(ids):
            return pieces
        start += step
