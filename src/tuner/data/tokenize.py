"""Segments -> `input_ids`, `attention_mask`, `labels` (-100 where nothing is trained).

Rules, the same for every dataset type:
  * the first segment is tokenized with the tokenizer's special tokens (a BOS where the
    tokenizer adds one), later segments without, and the pieces are concatenated: the
    boundary between prompt and completion is a token boundary, as in Axolotl;
  * a trained segment's tokens keep their ids as labels, others get -100
    (`train_on_inputs: true` trains every token);
  * EOS is appended (unless the text already ends with it) and trained whenever the last
    segment is (input_output rows are taken as written: no special tokens, no EOS);
  * rows longer than `sequence_len` follow `excess_length_strategy` (drop | truncate |
    raise); rows with no trained token left are dropped; both are counted.
Labels are built here, once. The training loop never re-derives a mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tuner.data.formats import Segment

IGNORE = -100

KEPT, TOO_LONG, NOTHING_TO_TRAIN = 0, 1, 2


@dataclass(frozen=True)
class TokenizeSettings:
    sequence_len: int
    excess_length_strategy: str  # drop | truncate | raise
    train_on_inputs: bool


def tokenize_rows(
    rows: list[list[Segment]],
    tokenizer: Any,
    settings: TokenizeSettings,
    special_tokens_first: bool = True,
    append_eos: bool = True,
) -> list[dict[str, Any]]:
    """Tokenize many rows at once (batched calls into the fast tokenizer).

    Returns one dict per row with input_ids, attention_mask, labels and `status`
    (KEPT, TOO_LONG or NOTHING_TO_TRAIN). Under `raise` the caller raises for TOO_LONG,
    naming the row.
    """
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
            trained = seg.train or settings.train_on_inputs
            labels.extend(piece if trained else [IGNORE] * len(piece))
        if append_eos and (not ids or ids[-1] != eos):
            ids.append(eos)
            labels.append(eos if (segs[-1].train or settings.train_on_inputs) else IGNORE)
        out.append(finish_row(ids, labels, settings))
    return out


def finish_row(ids: list[int], labels: list[int], settings: TokenizeSettings) -> dict[str, Any]:
    """Apply the length policy and the nothing-to-train rule to one tokenized row."""
    status, truncated = KEPT, False
    if len(ids) > settings.sequence_len:
        if settings.excess_length_strategy == "truncate":
            ids, labels = ids[: settings.sequence_len], labels[: settings.sequence_len]
            truncated = True
        else:
            status = TOO_LONG
    # Position 0 is never predicted (nothing comes before it), so it does not count.
    if status == KEPT and all(label == IGNORE for label in labels[1:]):
        status = NOTHING_TO_TRAIN
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels, "status": status, "truncated": truncated}
