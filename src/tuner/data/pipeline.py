"""The data stage: load -> format -> tokenize -> filter -> cache -> split.

`prepare` is the only entry point. It returns the prepared training rows (and evaluation
rows when `val_set_size` asks for them), reusing the prepared-dataset cache when the
fingerprint matches. This stage loads a tokenizer, never model weights.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.config.schema import DatasetConfig, TunerConfig
from tuner.data import cache
from tuner.data.formats import FieldError, get_format
from tuner.data.load import ROW, RawSource, load_hub, load_source, local_sources
from tuner.data.tokenize import KEPT, NOTHING_TO_TRAIN, TOO_LONG, TokenizeSettings, tokenize_rows
from tuner.errors import UserError

if TYPE_CHECKING:
    from datasets import Dataset

log = logging.getLogger("tuner")

COLUMNS = ("input_ids", "attention_mask", "labels")
INVALID = 3  # a row status beside tokenize's KEPT / TOO_LONG / NOTHING_TO_TRAIN
SHOWN_ROWS = 5  # how many dropped rows a summary names


@dataclass
class PreparedData:
    train: Dataset
    eval: Dataset | None
    fingerprint: str
    path: Path
    reused: bool
    stats: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        s = self.stats
        lines = [f"prepared dataset: {self.path} ({'reused' if self.reused else 'new'})"]
        for src in s["sources"]:
            dropped = []
            examples = src.get("dropped_examples", {})
            for key, what in (("too_long", "longer than sequence_len"), ("nothing_to_train", "with nothing to train"),
                              ("invalid", "invalid")):
                if src.get(key):
                    rows = examples.get(key)
                    at = f" (rows {', '.join(map(str, rows))}{', ...' if src[key] > len(rows) else ''})" if rows else ""
                    dropped.append(f"{src[key]} {what}{at}")
            extra = f", dropped {'; '.join(dropped)}" if dropped else ""
            trunc = f", {src['truncated']} truncated" if src.get("truncated") else ""
            lines.append(f"  {src['where']}: {src['read']} rows read, {src['kept']} kept{extra}{trunc}")
            lines.extend(f"    invalid {e}" for e in src.get("invalid_examples", []))
        lines.append(
            f"  total: {s['rows']} rows, {s['tokens']:,} tokens, {s['trained_tokens']:,} trained"
        )
        n_eval = 0 if self.eval is None else self.eval.num_rows
        lines.append(f"  split: {self.train.num_rows} train rows, {n_eval} eval rows")
        return "\n".join(lines)


def _tokenize_batch(
    batch: dict[str, list[Any]],
    *,
    ds: DatasetConfig,
    src: RawSource,
    tokenizer: Any,
    settings: TokenizeSettings,
    skip_invalid: bool,
) -> dict[str, list[Any]]:
    fmt = get_format(ds.type)
    names = [n for n in batch if n != ROW]
    segments, problems = [], []
    for values, index in zip(zip(*(batch[n] for n in names)), batch[ROW]):
        try:
            segments.append(fmt.segments(dict(zip(names, values)), ds))
            problems.append("")
        except FieldError as err:
            if not skip_invalid:
                raise UserError(
                    f"{src.where(index)}: {err}. Type {ds.type} reads the fields {', '.join(fmt.field_names(ds))}"
                    f" (this file has: {', '.join(names)})"
                ) from None
            segments.append(None)
            problems.append(str(err))
    rows = iter(tokenize_rows([s for s in segments if s is not None], tokenizer, settings))
    empty = {"input_ids": [], "attention_mask": [], "labels": [], "status": INVALID, "truncated": False}
    out: dict[str, list[Any]] = {k: [] for k in (*COLUMNS, "status", "truncated", "problem", ROW)}
    for seg, problem, index in zip(segments, problems, batch[ROW]):
        row = next(rows) if seg is not None else empty
        if row["status"] == TOO_LONG and settings.excess_length_strategy == "raise":
            raise UserError(
                f"{src.where(index)}: is {len(row['input_ids'])} tokens long, more than sequence_len "
                f"{settings.sequence_len} (excess_length_strategy: raise; use drop or truncate to go on)"
            )
        for key in (*COLUMNS, "status", "truncated"):
            out[key].append(row[key])
        out["problem"].append(problem)
        out[ROW].append(index)
    return out


def _tokenize_source(
    raw: Dataset, ds: DatasetConfig, src: RawSource, tokenizer: Any, settings: TokenizeSettings,
    num_proc: int | None, skip_invalid: bool,
) -> tuple[Dataset, dict[str, Any]]:
    import numpy as np
    from datasets import Features, Sequence, Value

    features = Features(
        {
            "input_ids": Sequence(Value("int32")),
            "attention_mask": Sequence(Value("int8")),
            "labels": Sequence(Value("int32")),
            "status": Value("int8"),
            "truncated": Value("bool"),
            "problem": Value("string"),
            ROW: Value("int64"),
        }
    )
    fn = partial(_tokenize_batch, ds=ds, src=src, tokenizer=tokenizer, settings=settings, skip_invalid=skip_invalid)
    mapped = raw.map(
        fn,
        batched=True,
        batch_size=1000,
        remove_columns=raw.column_names,
        features=features,
        num_proc=num_proc if num_proc and num_proc > 1 and raw.num_rows >= 2000 else None,
        load_from_cache_file=False,
        keep_in_memory=True,
        desc=f"tokenizing {src.label}",
    )
    status = np.asarray(mapped["status"])
    truncated = int(np.asarray(mapped["truncated"]).sum())
    kept = mapped.select(np.flatnonzero(status == KEPT)).remove_columns(["status", "truncated", "problem", ROW])
    invalid_idx = np.flatnonzero(status == INVALID)
    invalid = src.invalid + [(mapped[int(i)][ROW], mapped[int(i)]["problem"]) for i in invalid_idx[:SHOWN_ROWS]]
    stats = {
        "where": src.where(),
        "read": raw.num_rows + len(src.invalid),
        "kept": kept.num_rows,
        "too_long": int((status == TOO_LONG).sum()),
        "nothing_to_train": int((status == NOTHING_TO_TRAIN).sum()),
        "invalid": len(src.invalid) + len(invalid_idx),
        "invalid_examples": [f"row {row + 1}: {problem}" for row, problem in sorted(invalid)[:SHOWN_ROWS]],
        "dropped_examples": {
            name: [int(r) + 1 for r in np.asarray(mapped[ROW])[status == code][:SHOWN_ROWS]]
            for name, code in (("too_long", TOO_LONG), ("nothing_to_train", NOTHING_TO_TRAIN))
        },
        "truncated": truncated,
    }
    return kept, stats


def _build(cfg: TunerConfig, loaded: list[tuple[DatasetConfig, RawSource, Dataset]], tokenizer: Any) -> tuple[Dataset, dict[str, Any]]:
    import numpy as np
    from datasets import concatenate_datasets

    d = cfg.data
    settings = TokenizeSettings(d.sequence_len, d.excess_length_strategy, d.train_on_inputs)
    parts, sources = [], []
    for ds, src, raw in loaded:
        part, stats = _tokenize_source(raw, ds, src, tokenizer, settings, d.dataset_num_proc, d.skip_invalid_rows)
        parts.append(part)
        sources.append(stats)
    rows = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    if rows.num_rows == 0:
        raise UserError(
            "no rows left to train on after tokenization:\n"
            + "\n".join(
                f"  {s['where']}: {s['read']} read, {s['too_long']} longer than sequence_len {d.sequence_len}, "
                f"{s['nothing_to_train']} with nothing to train"
                for s in sources
            )
        )
    lengths = np.fromiter((len(x) for x in rows["input_ids"]), dtype=np.int64, count=rows.num_rows)
    labels = rows.with_format("numpy")["labels"]
    trained = int(sum(int((np.asarray(lab)[1:] != -100).sum()) for lab in labels))
    stats = {"sources": sources, "rows": rows.num_rows, "tokens": int(lengths.sum()), "trained_tokens": trained}
    return rows, stats


def split_eval(rows: Dataset, val_set_size: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """Deterministic split: the same rows are held out for the same data, size and seed."""
    import numpy as np

    if not val_set_size:
        return rows, None
    n = rows.num_rows
    if val_set_size < 1:
        k = math.ceil(n * val_set_size)
    else:
        if val_set_size != int(val_set_size):
            raise UserError(f"val_set_size: {val_set_size} is a row count (>= 1) so it must be a whole number")
        k = int(val_set_size)
    if k >= n:
        raise UserError(f"val_set_size: {val_set_size} holds out {k} of {n} rows, leaving none to train on")
    order = np.random.default_rng(seed).permutation(n)
    return rows.select(np.sort(order[k:])), rows.select(np.sort(order[:k]))


def prepare(cfg: TunerConfig, tokenizer: Any, tokenizer_files: list[Path]) -> PreparedData:
    """Prepared rows for `cfg`, from the cache when its fingerprint matches."""
    entries: list[tuple[DatasetConfig, RawSource, Dataset | None]] = []
    data_ids: list[str] = []
    for i, ds in enumerate(cfg.data.datasets):
        local = local_sources(ds, i)
        if local is None:
            src, data = load_hub(ds, i)
            entries.append((ds, src, data))
            data_ids.append(f"hub:{ds.path}:{ds.name}:{ds.split}:{data._fingerprint}")
        else:
            for src in local:
                entries.append((ds, src, None))
                data_ids.append(f"file:{cache.file_sha256(src.file)}")

    fp, inputs = cache.fingerprint(cfg, tokenizer_files, data_ids)
    root = Path(cfg.data.dataset_prepared_path)
    found = cache.load(root, fp)
    reused = found is not None
    if found is not None:
        rows, meta = found
        stats = meta["stats"]
    else:
        skip = cfg.data.skip_invalid_rows
        loaded = [(ds, src, data if data is not None else load_source(src, ds, skip)) for ds, src, data in entries]
        rows, stats = _build(cfg, loaded, tokenizer)
        cache.save(root, fp, rows, {"inputs": inputs, "stats": stats})
        rows = cache.load(root, fp)[0]  # memory-mapped from disk, like a reused dataset
    train, evaluation = split_eval(rows, cfg.data.val_set_size, cfg.training.seed)
    return PreparedData(train, evaluation, fp, root / fp, reused, stats)
