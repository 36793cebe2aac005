"""`tuner inspect`: look at prepared rows token by token, and at the dataset's statistics.

Trained tokens (those with a label; the first token of a row is never predicted, so it
never counts) are shown in green on a terminal, and in [brackets] when the output is
piped. The statistics are computed from the prepared rows themselves.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from typing import Any

from tuner.data.labels import trained_count, trained_positions
from tuner.data.pipeline import PreparedData, describe

GREEN, DIM, RESET = "\033[1;32m", "\033[2m", "\033[0m"


def use_colour(stream: Any = sys.stdout) -> bool:
    return stream.isatty() and not os.environ.get("NO_COLOR")


def _show(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def render_row(tokenizer: Any, input_ids: list[int], labels: list[int], colour: bool) -> str:
    trained = trained_positions(labels)
    parts = []
    for tok, on in zip(input_ids, trained):
        text = _show(tokenizer.decode([tok]))
        if colour:
            parts.append(f"{GREEN}{text}{RESET}" if on else f"{DIM}{text}{RESET}")
        else:
            parts.append(f"[{text}]" if on else text)
    sep = "" if colour else "|"
    spans, current = [], []
    for tok, on in zip(input_ids, trained):
        if on:
            current.append(tok)
        elif current:
            spans.append(current)
            current = []
    if current:
        spans.append(current)
    lines = [sep.join(parts), "  trained text:"]
    lines += [f"    {tokenizer.decode(span)!r}" for span in spans] or ["    (nothing)"]
    return "\n".join(lines)


@dataclass
class Stats:
    rows: int
    tokens: int
    trained: int
    lengths: list[int]
    pad_to_sequence_len_waste: float
    pad_to_longest_waste: float

    @property
    def trained_share(self) -> float:
        return self.trained / self.tokens if self.tokens else 0.0


def percentile(sorted_values: list[int], q: float) -> int:
    """Nearest-rank percentile of sorted values."""
    if not sorted_values:
        return 0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def compute_stats(rows: Any, sequence_len: int, micro_batch_size: int, seed: int) -> Stats:
    """Counts from the prepared rows; padding waste of batches as training would draw them."""
    from tuner.data.pack import shuffled_order

    lengths = [len(ids) for ids in rows["input_ids"]]
    trained = sum(trained_count(labels) for labels in rows["labels"])
    tokens = sum(lengths)
    n = len(lengths)
    order = shuffled_order(n, seed)  # the training loop's first epoch
    slots = sum(max(lengths[i] for i in order[k : k + micro_batch_size]) * len(order[k : k + micro_batch_size])
                for k in range(0, n, micro_batch_size))
    return Stats(
        rows=n, tokens=tokens, trained=trained, lengths=lengths,
        pad_to_sequence_len_waste=1 - tokens / (n * sequence_len) if n else 0.0,
        pad_to_longest_waste=1 - tokens / slots if slots else 0.0,
    )


def histogram(lengths: list[int], bins: int = 10, width: int = 40) -> list[str]:
    if not lengths:
        return []
    low, high = min(lengths), max(lengths)
    step = max(1, math.ceil((high - low + 1) / bins))
    counts = [0] * bins
    for x in lengths:
        counts[min((x - low) // step, bins - 1)] += 1
    top = max(counts)
    lines = []
    for b, c in enumerate(counts):
        start = low + b * step
        if start > high:
            break
        bar = "#" * max(1 if c else 0, round(width * c / top))
        lines.append(f"    {start:>6}-{min(start + step - 1, high):<6} {c:>7}  {bar}")
    return lines


def render_pair(tokenizer: Any, row: dict[str, Any], colour: bool) -> list[str]:
    """A preference pair: the prompt both sides share, then each side's trained completion."""
    cut = row["prompt_len"]
    prompt = row["chosen_input_ids"][:cut]
    assert prompt == row["rejected_input_ids"][:cut], "a prepared pair's prompts differ"
    out = [f"  prompt ({cut} tokens, shared, not trained): {_show(tokenizer.decode(prompt))}"]
    for side in ("chosen", "rejected"):
        ids, labels = row[f"{side}_input_ids"], row[f"{side}_labels"]
        start = max(cut - 1, 0)  # from the prompt's last token: a row's first position is never trained
        out.append(f"  {side} ({len(ids) - cut} tokens, {trained_count(labels)} trained): "
                   + render_row(tokenizer, ids[start:], labels[start:], colour))
    return out


def report(prepared: PreparedData, tokenizer: Any, sequence_len: int, micro_batch_size: int, seed: int,
           n_rows: int, colour: bool, packing: bool = False) -> str:
    rows = prepared.train
    out = [f"prepared dataset: {prepared.path} ({'reused' if prepared.reused else 'new'})"]
    if "chosen_input_ids" in rows.column_names:
        return "\n".join(out + pair_report(prepared, tokenizer, n_rows, colour))
    if "labels" not in rows.column_names:  # type: classification (a text and its label; nothing token-level trains)
        return "\n".join(out + classified_report(prepared, tokenizer, n_rows))
    for i in range(min(n_rows, rows.num_rows)):
        row = rows[i]
        n_trained = trained_count(row["labels"])
        out.append(f"\n--- row {i + 1} of {rows.num_rows}: {len(row['input_ids'])} tokens, {n_trained} trained "
                   f"({'green' if colour else '[bracketed]'})")
        out.append(render_row(tokenizer, row["input_ids"], row["labels"], colour))
    s = compute_stats(rows, sequence_len, micro_batch_size, seed)
    ordered = sorted(s.lengths)
    out.append("\n--- statistics (training rows)")
    out += describe(prepared.stats)
    out.append(f"  rows: {s.rows}, tokens: {s.tokens:,}, trained tokens: {s.trained:,} ({s.trained_share:.1%} of all)")
    out.append(
        f"  row length in tokens: min {ordered[0] if ordered else 0}, median {percentile(ordered, 50)}, "
        f"p95 {percentile(ordered, 95)}, max {ordered[-1] if ordered else 0}"
    )
    out += histogram(s.lengths)
    out.append(
        f"  padding waste at micro_batch_size {micro_batch_size}: {s.pad_to_longest_waste:.1%} padding to the "
        f"longest row of each batch (as tuner trains), {s.pad_to_sequence_len_waste:.1%} padding every row to "
        f"sequence_len {sequence_len}"
    )
    if packing:
        from tuner.data.pack import Batches

        bins = Batches(rows, tokenizer.pad_token_id, sequence_len, packing=True)
        out.append(f"  sample packing: {s.rows} rows in {bins.units} bins of {sequence_len} tokens, "
                   f"packing efficiency {bins.efficiency:.1%} (real tokens / slots)")
    if prepared.eval is not None:
        out.append(f"  evaluation rows: {prepared.eval.num_rows}")
    return "\n".join(out)


def classified_report(prepared: PreparedData, tokenizer: Any, n_rows: int) -> list[str]:
    """Classified texts: each row's tokens as the head reads them, and its label as written."""
    import json
    from collections import Counter

    rows = prepared.train
    out = []
    for i in range(min(n_rows, rows.num_rows)):
        row = rows[i]
        out.append(f"\n--- row {i + 1} of {rows.num_rows}: {len(row['input_ids'])} tokens, label {json.loads(row['label'])!r}")
        out.append("  " + _show(tokenizer.decode(row["input_ids"])))
    out.append("\n--- statistics (training rows)")
    out += describe(prepared.stats)
    counts = Counter(json.loads(v) for v in rows["label"])
    shown = ", ".join(f"{k!r}: {v}" for k, v in sorted(counts.items(), key=lambda kv: str(kv[0]))[:20])
    out.append(f"  labels: {len(counts)} distinct ({shown}{', ...' if len(counts) > 20 else ''})")
    if prepared.eval is not None:
        out.append(f"  evaluation rows: {prepared.eval.num_rows}")
    return out


def pair_report(prepared: PreparedData, tokenizer: Any, n_rows: int, colour: bool) -> list[str]:
    rows = prepared.train
    out = []
    for i in range(min(n_rows, rows.num_rows)):
        out.append(f"\n--- pair {i + 1} of {rows.num_rows} ({'green' if colour else '[bracketed]'}: trained)")
        out += render_pair(tokenizer, rows[i], colour)
    out.append("\n--- statistics (training pairs)")
    out += describe(prepared.stats)
    prompts = sorted(rows["prompt_len"])
    longer = sorted(max(len(c), len(r)) for c, r in zip(rows["chosen_input_ids"], rows["rejected_input_ids"]))
    out.append(f"  prompt length in tokens: min {prompts[0]}, median {percentile(prompts, 50)}, max {prompts[-1]}")
    out.append(f"  longer side of a pair: min {longer[0]}, median {percentile(longer, 50)}, p95 {percentile(longer, 95)}, "
               f"max {longer[-1]}")
    if prepared.eval is not None:
        out.append(f"  evaluation pairs: {prepared.eval.num_rows}")
    return out


def stream_report(cfg: Any, tokenizer: Any, n_rows: int, colour: bool) -> str:
    """`tuner inspect` on a `pretraining_dataset` config: the first packed rows as the stream makes
    them (each document piece on its own line; a piece's first token is never trained), and the
    rows and tokens the run will draw."""
    from tuner.data.pack import packed_batch
    from tuner.data.stream import stream_data

    data = stream_data(cfg, tokenizer, [], 0, 1)
    out = [data.summary()]
    for i in range(n_rows):
        row = data.train.next_row()
        labels = packed_batch([row], tokenizer.pad_token_id)["labels"][0].tolist()
        out.append(f"\n--- row {i + 1}: {sum(len(ids) for ids, _ in row)} tokens in {len(row)} document piece(s) "
                   f"({'green' if colour else '[bracketed]'}: trained)")
        at = 0
        for ids, _ in row:
            out.append(render_row(tokenizer, ids, labels[at:at + len(ids)], colour).split("\n")[0])
            at += len(ids)
    return "\n".join(out)
