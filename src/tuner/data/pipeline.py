"""The data stage: load -> format -> tokenize -> filter -> cache -> split.

`prepare` is the only entry point. It returns the prepared training rows (and evaluation
rows: `test_datasets`, or `val_set_size` rows held out), reusing the prepared-dataset cache
when the fingerprint matches. This stage loads a tokenizer, never model weights.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.config.schema import DatasetConfig, TunerConfig
from tuner.data import cache, templates
from tuner.data.dedup import drop_seen, first_copies
from tuner.data.formats import EncodeContext, FieldError, get_format
from tuner.data.formats.classification import classified_row
from tuner.data.formats.preference import pair_row, unpaired_row
from tuner.data.formats.prompts import prompt_row
from tuner.data.labels import IGNORE
from tuner.data.load import ROW, RawSource, load_hub, load_source, local_sources
from tuner.data.mixture import MixSettings, describe_mixture, mix
from tuner.data.tokenize import (
    KEPT,
    NOTHING_TO_TRAIN,
    TOO_LONG,
    TOO_SHORT,
    TokenizeSettings,
    finish_row,
    split_row,
)
from tuner.errors import UserError

if TYPE_CHECKING:
    from datasets import Dataset

log = logging.getLogger("tuner")

INVALID = 3  # a row status beside tokenize's KEPT / TOO_LONG / NOTHING_TO_TRAIN
PIECE = "_piece"  # excess_length_strategy: split: a prepared row's piece number in its document (0: first or whole)
SHOWN_ROWS = 5  # how many dropped rows a summary names


@dataclass
class PreparedData:
    train: Dataset
    eval: Dataset | None
    fingerprint: str
    path: Path
    reused: bool
    stats: dict[str, Any] = field(default_factory=dict)
    eval_stats: dict[str, Any] | None = None
    chat_template: str | None = None  # the template chat rows were rendered with

    def summary(self) -> str:
        lines = [f"prepared dataset: {self.path} ({'reused' if self.reused else 'new'})"]
        lines += describe(self.stats)
        if self.eval_stats is not None:
            lines.append("  evaluation (test_datasets):")
            lines += ["  " + line for line in describe(self.eval_stats)]
        n_eval = 0 if self.eval is None else self.eval.num_rows
        lines.append(f"  split: {self.train.num_rows} train rows, {n_eval} eval rows")
        return "\n".join(lines)


def describe(stats: dict[str, Any]) -> list[str]:
    """Per-source counts (read, kept, dropped and why, with row numbers) and totals."""
    lines = []
    for src in stats["sources"]:
        dropped = []
        examples = src.get("dropped_examples", {})
        for key, what in (("too_long", "longer than sequence_len"), ("too_short", "shorter than min_sample_len"),
                          ("nothing_to_train", "with nothing to train"), ("invalid", "invalid")):
            if src.get(key):
                rows = examples.get(key)
                at = f" (rows {', '.join(map(str, rows))}{', ...' if src[key] > len(rows) else ''})" if rows else ""
                dropped.append(f"{src[key]} {what}{at}")
        extra = f", dropped {'; '.join(dropped)}" if dropped else ""
        trunc = f", {src['truncated']} truncated" if src.get("truncated") else ""
        trunc += f", {src['split']} longer than sequence_len split into {src['pieces']} pieces" if src.get("split") else ""
        lines.append(f"  {src['where']}: {src['read']} rows read, {src['kept']} kept{extra}{trunc}")
        lines.extend(f"    invalid {e}" for e in src.get("invalid_examples", []))
    duplicates = f" ({stats['duplicates']} exact duplicates dropped)" if "duplicates" in stats else ""
    if "mixture" in stats:
        lines += describe_mixture(stats["mixture"])
    if stats.get("also_in_train"):
        duplicates += f" ({stats['also_in_train']} rows that are also training rows dropped)"
    trained = ("prompts only: their completions are sampled and trained during training" if stats.get("prompts_only")
               else f"{stats['trained_tokens']:,} trained")
    lines.append(f"  total: {stats['rows']} rows{duplicates}, {stats['tokens']:,} tokens, {trained}")
    return lines


@dataclass(frozen=True)
class Encoder:
    """What turning rows into tokens needs: the tokenizer, the chat template, the policies."""

    tokenizer: Any
    template: str | None  # the top-level chat template (a dataset may name its own)
    settings: TokenizeSettings
    skip_invalid: bool
    eot_tokens: tuple[str, ...] | None = None
    max_prompt_len: int | None = None  # preference rows: the prompt's share under truncation

    def context(self, ds: DatasetConfig) -> EncodeContext:
        template = templates.for_dataset(ds, self.template, self.tokenizer) if get_format(ds).chat else None
        return EncodeContext(self.tokenizer, self.settings.train_on_inputs, template, self.eot_tokens)


@dataclass(frozen=True)
class RowKind:
    """What a prepared row holds: one sequence with labels (SFT), a preference pair, or an
    unpaired example (KTO); each dataset format declares its kind (`DatasetFormat.rows`)."""

    columns: dict[str, str]  # column -> "ids" (token ids), "mask" (0/1), "int" or "bool"
    label_columns: tuple[str, ...]
    token_columns: tuple[str, ...]  # whose lengths add up to a row's tokens
    finish: Callable[[Any, Encoder], dict[str, Any]]  # an encoded row -> its columns, status and truncated

    def features(self) -> dict[str, Any]:
        from datasets import Sequence, Value

        kinds = {"ids": Sequence(Value("int32")), "mask": Sequence(Value("int8")), "int": Value("int32"),
                 "bool": Value("bool"), "str": Value("string")}
        return {name: kinds[kind] for name, kind in self.columns.items()}

    def empty(self) -> dict[str, Any]:
        return {name: [] if kind in ("ids", "mask") else (False if kind == "bool" else "" if kind == "str" else 0)
                for name, kind in self.columns.items()}

    def tokens(self, result: dict[str, Any]) -> int:
        return max(len(result[c]) for c in self.token_columns)


SEQUENCE = RowKind({"input_ids": "ids", "attention_mask": "mask", "labels": "ids"}, ("labels",), ("input_ids",),
                   lambda encoded, enc: finish_row(*encoded, enc.settings))
PAIR = RowKind({"chosen_input_ids": "ids", "chosen_labels": "ids", "rejected_input_ids": "ids", "rejected_labels": "ids",
                "prompt_len": "int"}, ("chosen_labels", "rejected_labels"), ("chosen_input_ids", "rejected_input_ids"),
               lambda pair, enc: pair_row(pair, enc.settings.sequence_len, enc.settings.excess_length_strategy,
                                          enc.max_prompt_len))
UNPAIRED = RowKind({"input_ids": "ids", "labels": "ids", "prompt_len": "int", "desirable": "bool"}, ("labels",),
                   ("input_ids",), lambda example, enc: unpaired_row(example, enc.settings.sequence_len,
                                                                     enc.settings.excess_length_strategy,
                                                                     enc.max_prompt_len))
CLASSIFIED = RowKind({"input_ids": "ids", "label": "str"}, (), ("input_ids",),
                     lambda encoded, enc: classified_row(encoded, enc.settings.sequence_len,
                                                         enc.settings.excess_length_strategy,
                                                         enc.settings.min_sample_len))
PROMPT = RowKind({"input_ids": "ids", "prompt": "str", "reward_columns": "str"}, (), ("input_ids",),
                 lambda encoded, enc: prompt_row(encoded, enc.settings.sequence_len, enc.settings.excess_length_strategy))
ROW_KINDS = {"sequence": SEQUENCE, "pair": PAIR, "unpaired": UNPAIRED, "classified": CLASSIFIED, "prompt": PROMPT}


def row_kind(cfg: TunerConfig) -> RowKind:
    """The kind of row the config's objective trains on (reward models: pairs)."""
    objective = cfg.objective
    if objective == "classification":
        return CLASSIFIED
    if objective == "grpo":
        return PROMPT
    return SEQUENCE if objective == "sft" else UNPAIRED if objective == "kto" else PAIR


def _encode_rows(rows: list[dict[str, Any]], ds: DatasetConfig, enc: Encoder) -> list[dict[str, Any] | FieldError]:
    """Tokenized rows with their status (see RowKind.finish), or the FieldError of each bad row."""
    fmt = get_format(ds)
    kind = ROW_KINDS[fmt.rows]
    encoded = fmt.encode_many(rows, ds, enc.context(ds))
    return [r if isinstance(r, FieldError) else kind.finish(r, enc) for r in encoded]


def _tokenize_batch(batch: dict[str, list[Any]], *, ds: DatasetConfig, src: RawSource, enc: Encoder) -> dict[str, list[Any]]:
    names = [n for n in batch if n != ROW]
    rows = [dict(zip(names, values)) for values in zip(*(batch[n] for n in names))]
    kind = ROW_KINDS[get_format(ds).rows]
    columns = (*kind.columns, "status", "truncated")
    out: dict[str, list[Any]] = {k: [] for k in (*columns, "problem", ROW, PIECE)}
    for result, index in zip(_encode_rows(rows, ds, enc), batch[ROW]):
        problem = ""
        if isinstance(result, FieldError):
            if not enc.skip_invalid:
                fields = ", ".join(get_format(ds).field_names(ds))
                raise UserError(
                    f"{src.where(index)}: {result}. Type {ds.kind} reads {fields} (this file has: {', '.join(names)})"
                )
            problem = str(result)
            result = {**kind.empty(), "status": INVALID, "truncated": False}
        elif result["status"] == TOO_LONG and enc.settings.excess_length_strategy == "raise":
            raise UserError(
                f"{src.where(index)}: is {kind.tokens(result)} tokens long, more than sequence_len "
                f"{enc.settings.sequence_len} (excess_length_strategy: raise; use drop or truncate to go on)"
            )
        pieces = [result]
        if problem == "" and result["status"] == TOO_LONG and enc.settings.excess_length_strategy == "split":
            pieces = [finish_row(ids, labels, replace(enc.settings, min_sample_len=None))
                      for ids, labels in split_row(result["input_ids"], result["labels"], enc.settings.sequence_len,
                                                   ds.overlap_len or 0)]
        for number, piece in enumerate(pieces):
            for key in columns:
                out[key].append(piece[key])
            out["problem"].append(problem)
            out[ROW].append(index)
            out[PIECE].append(number)
    return out


BATCH_ROWS = 1000  # raw rows per batched call into the fast tokenizer, at most
BATCH_BYTES = 4 << 20  # bytes of raw data per call: long documents (the tokenizer's output takes some
                       # 100 bytes a token until it is turned into Arrow)
TOTALS_BATCH = 1000  # prepared rows per Arrow batch when counting tokens (rows of up to sequence_len each)
ROWS_PER_WORKER = 1000  # a source is split among dataset_num_proc workers only with at least this many rows each
_JOB: tuple[Any, ...] | None = None  # what forked workers encode: set before they fork, read by _encode_job


def _schema(ds: DatasetConfig) -> Any:
    from datasets import Features, Value

    return Features(
        {
            **ROW_KINDS[get_format(ds).rows].features(),
            "status": Value("int8"),
            "truncated": Value("bool"),
            "problem": Value("string"),
            ROW: Value("int64"),
            PIECE: Value("int32"),
        }
    ).arrow_schema


STATUS_COLUMNS = ("status", "truncated", "problem", ROW, PIECE)  # what each raw row became (kept or why not)


def _encode_range(raw: Dataset, ds: DatasetConfig, src: RawSource, enc: Encoder, start: int, stop: int,
                  out: Path) -> Any:
    """Raw rows [start, stop) tokenized. The kept rows are written to the Arrow stream file `out` one
    batch at a time, so that no more than a batch of tokens is ever in memory however large the source;
    what every raw row became (STATUS_COLUMNS, a few bytes a row) is returned as one Arrow table."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from datasets import Features

    schema = _schema(ds)
    kept_schema = Features(ROW_KINDS[get_format(ds).rows].features()).arrow_schema
    statuses = []
    with pa.OSFile(str(out), "wb") as sink, pa.ipc.new_stream(sink, kept_schema) as writer:
        for at, end in _batches(raw, start, stop):
            table = pa.Table.from_pydict(_tokenize_batch(raw[at:end], ds=ds, src=src, enc=enc), schema=schema)
            writer.write_table(table.filter(pc.equal(table.column("status"), KEPT)).select(kept_schema.names)
                               .replace_schema_metadata(kept_schema.metadata))
            statuses.append(table.select(STATUS_COLUMNS))
    return pa.concat_tables(statuses) if statuses else schema.empty_table().select(STATUS_COLUMNS)


def _batches(raw: Dataset, start: int, stop: int) -> Any:
    """Row ranges [a, b) that cover [start, stop), each of at most BATCH_ROWS rows and BATCH_BYTES of
    raw data (one row, however large, at the least)."""
    arrow, at = raw.with_format("arrow"), start
    while at < stop:
        end = min(at + BATCH_ROWS, stop)
        while end - at > 1 and (size := arrow[at:end].nbytes) > BATCH_BYTES:
            end = at + max(1, (end - at) * BATCH_BYTES // size)  # fewer rows, until they fit
        yield at, end
        at = end


def _encode_job(job: tuple[int, int, Path]) -> Any:
    assert _JOB is not None
    return _encode_range(*_JOB, *job)


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask: a container's or taskset's share)."""
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def workers_for(rows: int, num_proc: int | None) -> int:
    """How many processes tokenize a source of `rows` rows: `dataset_num_proc` (default: the usable
    cores, as Axolotl's os.cpu_count()), fewer when a worker would get under ROWS_PER_WORKER rows
    (starting it would cost more than it saves)."""
    return max(1, min(num_proc or usable_cores(), rows // ROWS_PER_WORKER))


def _encode_source(raw: Dataset, ds: DatasetConfig, src: RawSource, enc: Encoder, num_proc: int | None,
                   scratch: Path) -> tuple[Dataset, Any]:
    """Every raw row tokenized, in this process or in `dataset_num_proc` forked workers, each taking
    contiguous ranges of rows in turn: (the kept rows, memory-mapped from Arrow files in `scratch`, in
    row order; the status of every raw row, one Arrow table)."""
    import multiprocessing
    import os

    import pyarrow as pa
    from datasets import Dataset, concatenate_datasets

    global _JOB
    n, workers = raw.num_rows, workers_for(raw.num_rows, num_proc)
    step = n if workers == 1 else max(BATCH_ROWS, math.ceil(n / (4 * workers)))  # a few ranges per worker
    jobs = [(at, min(at + step, n), scratch / f"rows-{at:012d}.arrow") for at in range(0, max(n, 1), max(step, 1))]
    if workers == 1:
        statuses = [_encode_range(raw, ds, src, enc, *job) for job in jobs]
    else:
        # Workers tokenize; the fast tokenizer's own thread pool would only compete with them (and it
        # must not have run before a fork), so it is switched off, as the tokenizers library asks.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        _JOB = (raw, ds, src, enc)
        try:
            with multiprocessing.get_context("fork").Pool(workers) as pool:  # forked: nothing to pickle but statuses
                statuses = pool.map(_encode_job, jobs, chunksize=1)
        finally:
            _JOB = None
    parts = [Dataset.from_file(str(out)) for _, _, out in jobs]  # memory-mapped, not read into memory
    kept = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    return kept, pa.concat_tables(statuses)


def _tokenize_source(raw: Dataset, ds: DatasetConfig, src: RawSource, enc: Encoder, num_proc: int | None,
                     scratch: Path) -> tuple[Dataset, dict[str, Any]]:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    log.info("tokenizing %s (%d rows, %d processes)", src.label, raw.num_rows, workers_for(raw.num_rows, num_proc))
    kept, mapped = _encode_source(raw, ds, src, enc, num_proc, scratch)
    status = mapped.column("status").to_numpy()
    row_numbers = mapped.column(ROW).to_numpy()
    piece = mapped.column(PIECE).to_numpy()
    invalid_idx = np.flatnonzero(status == INVALID)
    problems = mapped.column("problem").take(pa.array(invalid_idx[:SHOWN_ROWS])).to_pylist() if len(invalid_idx) else []
    invalid = src.invalid + [(int(row_numbers[i]), p) for i, p in zip(invalid_idx[:SHOWN_ROWS], problems)]
    stats = {
        "where": src.where(),
        "read": raw.num_rows + len(src.invalid),
        "kept": kept.num_rows,
        "too_long": int((status == TOO_LONG).sum()),
        "too_short": int((status == TOO_SHORT).sum()),
        "nothing_to_train": int((status == NOTHING_TO_TRAIN).sum()),
        "invalid": len(src.invalid) + len(invalid_idx),
        "invalid_examples": [f"row {row + 1}: {problem}" for row, problem in sorted(invalid)[:SHOWN_ROWS]],
        "dropped_examples": {
            name: [int(r) + 1 for r in row_numbers[status == code][:SHOWN_ROWS]]
            for name, code in (("too_long", TOO_LONG), ("too_short", TOO_SHORT), ("nothing_to_train", NOTHING_TO_TRAIN))
        },
        "truncated": int(pc.sum(mapped.column("truncated")).as_py() or 0),
    }
    if enc.settings.excess_length_strategy == "split":
        stats["split"] = int((piece == 1).sum())  # rows cut into pieces
        stats["pieces"] = int(np.isin(row_numbers, row_numbers[piece == 1]).sum())  # the pieces of those rows
    return kept, stats


def _build(entries: list[tuple[DatasetConfig, RawSource, Dataset]], enc: Encoder, num_proc: int | None,
           kind: RowKind, scratch: Path, deduplicate: bool = False, mixture: MixSettings | None = None,
           ) -> tuple[Dataset, dict[str, Any]]:
    """Tokenize every source (its rows written to Arrow files under `scratch` as they are made); then
    drop exact duplicates (dataset_exact_deduplication) and make the mixture (weights, mix_strategy:
    tuner.data.mixture), both on the concatenated rows."""
    import numpy as np
    from datasets import concatenate_datasets

    parts, sources, owners = [], [], []
    for number, (ds, src, raw) in enumerate(entries):
        folder = scratch / f"source-{number}"
        folder.mkdir()
        part, stats = _tokenize_source(raw, ds, src, enc, num_proc, folder)
        parts.append(part)
        sources.append(stats)
        owners.append(np.full(part.num_rows, src.index, dtype=np.int64))
    rows = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    dataset_of = np.concatenate(owners)
    duplicates = 0
    if deduplicate:
        keep = first_copies(rows)
        duplicates = rows.num_rows - len(keep)
        rows, dataset_of = (rows.select(keep), dataset_of[keep]) if duplicates else (rows, dataset_of)
    mixed = None
    if mixture is not None and mixture.active:
        names = {src.index: f"{src.key}[{src.index}] ({ds.path})" for ds, src, _ in entries}
        order, mixed = mix(dataset_of, mixture, [names[i] for i in range(len(mixture.weights))])
        rows = rows.select(order)
    if rows.num_rows == 0:
        raise UserError(
            "no rows left after tokenization:\n"
            + "\n".join(
                f"  {s['where']}: {s['read']} read, {s['too_long']} longer than sequence_len "
                f"{enc.settings.sequence_len}, {s.get('too_short', 0)} shorter than min_sample_len, "
                f"{s['nothing_to_train']} with nothing to train, {s['invalid']} invalid"
                for s in sources
            )
        )
    stats = {"sources": sources, **_totals(rows, kind)}
    if mixed is not None:
        stats["mixture"] = mixed
    return rows, {**stats, "duplicates": duplicates} if deduplicate else stats


def _totals(rows: Dataset, kind: RowKind) -> dict[str, int]:
    """Rows, tokens and trained tokens of prepared rows (Arrow compute over whole columns; the
    rule is labels.trained_count's: a label that is not IGNORE, after each row's first)."""
    import pyarrow.compute as pc

    def total(values: Any) -> int:
        return int(pc.sum(values).as_py() or 0)

    tokens = trained = 0
    # a batch of rows at a time (in order, an index mapping applied), so that memory stays flat
    for table in rows.with_format("arrow").iter(batch_size=TOTALS_BATCH):
        tokens += sum(total(pc.list_value_length(table.column(c))) for c in kind.token_columns)
        for c in kind.label_columns:
            labels = table.column(c)
            firsts = pc.list_element(labels.filter(pc.greater(pc.list_value_length(labels), 0)), 0)
            trained += total(pc.not_equal(pc.list_flatten(labels), IGNORE)) - total(pc.not_equal(firsts, IGNORE))
    totals = {"rows": rows.num_rows, "tokens": tokens, "trained_tokens": trained}
    return {**totals, "prompts_only": True} if kind is PROMPT else totals  # GRPO: completions are sampled


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


def _prepared(
    cfg: TunerConfig, key: str, entries_cfg: list[DatasetConfig], enc: Encoder, tokenizer_files: list[Path]
) -> tuple[Dataset, dict[str, Any], str, bool]:
    """(rows, stats, fingerprint, reused) for `datasets` or `test_datasets`."""
    entries: list[tuple[DatasetConfig, RawSource, Dataset | None]] = []
    data_ids: list[str] = []
    for i, ds in enumerate(entries_cfg):
        local = local_sources(ds, i, key)
        if local is None:
            src, data = load_hub(ds, i, key)
            entries.append((ds, src, data))
            data_ids.append(f"hub:{ds.path}:{ds.name}:{ds.split}:{data._fingerprint}")
        else:
            for src in local:
                entries.append((ds, src, None))
                data_ids.append(f"file:{cache.file_sha256(src.file)}")
    fp, inputs = cache.fingerprint(cfg, key, tokenizer_files, data_ids, enc.template)
    root = Path(cfg.data.dataset_prepared_path)
    with cache.lock(root, fp):  # one process prepares; others started at the same time wait, then reuse
        found = cache.load(root, fp)
        if found is not None:
            rows, meta = found
            return rows, meta["stats"], fp, True
        log.info("preparing %s into %s", key, root / fp)
        loaded = [(ds, src, data if data is not None else load_source(src, ds, enc.skip_invalid)) for ds, src, data in entries]
        with cache.scratch(root, fp) as scratch:
            rows, stats = _build(loaded, enc, cfg.data.dataset_num_proc, row_kind(cfg), scratch,
                                 cfg.data.dataset_exact_deduplication, MixSettings.of(cfg) if key == "datasets" else None)
            cache.save(root, fp, rows, {"inputs": inputs, "stats": stats})
        return cache.load(root, fp)[0], stats, fp, False  # memory-mapped from disk, like a reused dataset


OBJECTIVE_NAMES = {"sft": "supervised fine-tuning", "reward": "reward_model: true", "classification": "classification"}


def check_row_kinds(cfg: TunerConfig) -> None:
    """Every dataset's rows are the kind the objective trains on (pairs for rl: dpo, ...)."""
    want = row_kind(cfg)
    for key in ("datasets", "test_datasets"):
        for i, ds in enumerate(getattr(cfg.data, key) or []):
            if ROW_KINDS[get_format(ds).rows] is not want:
                what = {"sequence": "an SFT type", "pair": "a preference-pair type", "unpaired": "a KTO type",
                    "classified": "a classification type", "prompt": "a prompts type"}
                raise UserError(
                    f"{key}[{i}].type: {ds.kind} is {what[get_format(ds).rows]}, but "
                    f"{OBJECTIVE_NAMES.get(cfg.objective, 'rl: ' + cfg.objective)} trains on "
                    f"{ {SEQUENCE: 'SFT', PAIR: 'preference-pair', UNPAIRED: 'KTO', CLASSIFIED: 'classification', PROMPT: 'prompt'}[want] } rows"
                )


def prepare(cfg: TunerConfig, tokenizer: Any, tokenizer_files: list[Path]) -> PreparedData:
    """Prepared rows for `cfg`, from the cache when its fingerprint matches.

    The chat template the data is rendered with is returned with it (`chat_template`), for
    the tokenizer saved with the trained model.
    """
    d = cfg.data
    if d.pretraining_dataset:
        raise UserError("pretraining_dataset: the corpus is streamed, tokenized and packed while `tuner train` runs; "
                        "there is nothing to prepare (`tuner inspect` shows its first packed rows)")
    template = templates.resolve(d, tokenizer)
    enc = Encoder(tokenizer, template, TokenizeSettings(d.sequence_len, d.excess_length_strategy, d.train_on_inputs,
                                                        d.min_sample_len),
                  d.skip_invalid_rows, tuple(d.eot_tokens) if d.eot_tokens else None, cfg.preference.max_prompt_len)
    check_row_kinds(cfg)
    rows, stats, fp, reused = _prepared(cfg, "datasets", d.datasets, enc, tokenizer_files)
    root = Path(d.dataset_prepared_path)
    if d.test_datasets:
        evaluation, eval_stats, _, _ = _prepared(cfg, "test_datasets", d.test_datasets, enc, tokenizer_files)
        if d.dataset_exact_deduplication:  # evaluation rows that are training rows measure nothing new
            evaluation, seen = drop_seen(evaluation, rows)
            eval_stats = {**eval_stats, "also_in_train": seen, **_totals(evaluation, row_kind(cfg))}
            if evaluation.num_rows == 0:
                raise UserError("test_datasets: every evaluation row is also a training row "
                                "(dataset_exact_deduplication dropped them all)")
        return PreparedData(rows, evaluation, fp, root / fp, reused, stats, eval_stats, template)
    train, evaluation = split_eval(rows, d.val_set_size, cfg.training.seed)
    return PreparedData(train, evaluation, fp, root / fp, reused, stats, chat_template=template)


def encode_rows(cfg: TunerConfig, tokenizer: Any, ds: DatasetConfig, rows: list[dict[str, Any]]) -> list[Any]:
    """Raw rows of the dataset entry `ds` encoded as `prepare` encodes them (each a prepared row
    with its `status`, or the FieldError of a bad row): for scoring rows outside the cache."""
    d = cfg.data
    template = templates.resolve(d, tokenizer) if tokenizer.chat_template is None else tokenizer.chat_template
    enc = Encoder(tokenizer, template, TokenizeSettings(d.sequence_len, d.excess_length_strategy, d.train_on_inputs,
                                                        d.min_sample_len),
                  False, tuple(d.eot_tokens) if d.eot_tokens else None, cfg.preference.max_prompt_len)
    return _encode_rows(rows, ds, enc)
