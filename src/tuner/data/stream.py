"""`pretraining_dataset:` (Axolotl's key): a corpus streamed through 🤗 datasets' streaming mode,
tokenized on the fly and packed into full `sequence_len` rows. Nothing is prepared or cached.

The corpus is a local file (.jsonl/.json/.parquet/.csv/.txt), a folder of such shards, or a Hub
dataset (`path`, `name`, `split`, `data_files`). `skip` rows are skipped at its start. With
several processes each reads a disjoint part (datasets.distributed.split_dataset_by_node: whole
shards per process when their number divides evenly, else every world_size-th row), so no two
processes train the same row.

Packing: each document is tokenized (with the tokenizer's special tokens, e.g. a BOS) and ends
with EOS; documents are laid end to end and cut into rows of exactly `sequence_len` tokens. A
document that does not fit in a row continues at the start of the next. Within a row each
document piece is its own document for attention (position_ids restart, pack.packed_batch), and
the first token of every piece gets label -100: no document is trained as the continuation of
the one before it. Every other token is trained.

Exact resume: `state_dict()` is where the stream stands after the rows served so far (the
datasets iterator's own state at the start of the current batch of documents, how many of that
batch's documents are used up, and how far into the next), and `load_state_dict` puts a fresh
stream there; the rows that follow are the same tokens. This module needs a tokenizer, never
model weights.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner.config.schema import PretrainingDataset, TunerConfig
from tuner.errors import UserError

BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text"}
DOCS_PER_BATCH = 64  # documents tokenized in one call


def _local_files(spec: PretrainingDataset, where: str) -> list[Path] | None:
    """The files of a local corpus, or None when `path` is not local (a Hub id)."""
    path = Path(spec.path).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        if spec.data_files:
            names = [spec.data_files] if isinstance(spec.data_files, str) else spec.data_files
            files = sorted(f for n in names for f in path.glob(n))
            if not files:
                raise UserError(f"{where}.data_files: {names} match no file in {path}")
        else:
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in BUILDERS)
            if not files:
                raise UserError(f"{where}.path: the folder {path} holds no {'/'.join(BUILDERS)} files")
        return files
    if spec.path.startswith((".", "/", "~")) or path.suffix.lower() in BUILDERS:
        raise UserError(f"{where}.path: {spec.path!r} does not exist (looked for {path.resolve()})")
    return None


def _builder(files: list[Path], where: str) -> str:
    kinds = {BUILDERS.get(f.suffix.lower()) for f in files}
    if None in kinds:
        odd = next(f for f in files if f.suffix.lower() not in BUILDERS)
        raise UserError(f"{where}.path: cannot read {odd} (the corpus files must be {', '.join(BUILDERS)})")
    if len(kinds) > 1:
        raise UserError(f"{where}.path: the corpus mixes file types ({', '.join(sorted(kinds))}); use one")
    return kinds.pop()


def open_stream(spec: PretrainingDataset, rank: int, world_size: int, where: str = "pretraining_dataset[0]") -> Any:
    """The datasets IterableDataset of this process's part of the corpus."""
    from datasets import load_dataset
    from datasets.distributed import split_dataset_by_node

    files = _local_files(spec, where)
    try:
        if files is not None:
            stream = load_dataset(_builder(files, where), data_files=[str(f) for f in files], split="train",
                                  streaming=True)
        else:
            if spec.trust_remote_code:
                raise UserError(f"{where}.trust_remote_code: the installed datasets library runs no dataset loading "
                                "scripts; stream the dataset's data files (data_files) instead")
            stream = load_dataset(spec.path, name=spec.name, split=spec.split, data_files=spec.data_files,
                                  streaming=True)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - datasets raises many types
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise UserError(f"{where}.path: cannot stream {spec.path!r}: {first}") from None
    if spec.skip:
        stream = stream.skip(spec.skip)
    if world_size > 1:
        stream = split_dataset_by_node(stream, rank=rank, world_size=world_size)
    return stream


def corpus_fingerprint(cfg: TunerConfig, tokenizer_files: Sequence[Path]) -> str:
    """What a resume must share: the stream's keys, sequence_len, the tokenizer files, and the
    corpus files' names and sizes (not their contents: a corpus may be terabytes)."""
    from tuner import __version__
    from tuner.data.cache import file_sha256

    spec = cfg.data.pretraining_dataset[0]
    files = _local_files(spec, "pretraining_dataset[0]") or []
    inputs = {
        "tuner_version": __version__,
        "stream": spec.model_dump(mode="json"),
        "sequence_len": cfg.data.sequence_len,
        "tokenizer_files": {p.name: file_sha256(p) for p in tokenizer_files},
        "files": [(f.name, f.stat().st_size) for f in files],
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:20]


@dataclass
class TokenStream:
    """This process's packed rows of the corpus, in order: `next_row()` is a list of
    (input_ids, labels) document pieces of `sequence_len` tokens in all."""

    spec: PretrainingDataset
    tokenizer: Any
    sequence_len: int
    rank: int = 0
    world_size: int = 1
    rows_served: int = 0
    fingerprint: str = ""
    planned_rows: int = 0
    _source: Any = field(default=None, repr=False)
    _iterator: Any = field(default=None, repr=False)
    _batch_state: Any = field(default=None, repr=False)  # the source's state before the current batch
    _batch: list[list[int]] = field(default_factory=list, repr=False)  # the current batch's documents
    _used: int = 0  # documents of the current batch used up
    _offset: int = 0  # tokens of the next document already served
    _documents: int = 0  # documents read (this process)

    def __post_init__(self) -> None:
        self._source = open_stream(self.spec, self.rank, self.world_size)

    @property
    def num_rows(self) -> int:
        """The packed rows the run draws, all processes together (a stream has no length of its own)."""
        return self.planned_rows

    # ------------------------------------------------------------------ reading

    def _read_batch(self, resumed_at: Any = None) -> bool:
        """Tokenize the next documents into `_batch`. False at the end of the corpus."""
        if self._iterator is None:  # a fresh iterator: at the start, or where load_state_dict put the source
            self._iterator = iter(self._source)
            self._batch_state = {"source": resumed_at}
        else:  # after the previous batch's last document
            self._batch_state = {"source": self._source.state_dict()}
        texts = []
        for example in self._iterator:
            texts.append(self._text(example))
            if len(texts) == DOCS_PER_BATCH:
                break
        self._batch, self._used, self._offset = self._encode(texts), 0, 0
        return bool(texts)

    def _text(self, example: dict[str, Any]) -> str:
        column = self.spec.text_column
        if column not in example:
            raise UserError(f"pretraining_dataset[0].text_column: the corpus rows have no column {column!r} "
                            f"(they have: {', '.join(example)})")
        value = example[column]
        if not isinstance(value, str):
            raise UserError(f"pretraining_dataset[0]: row {self._documents + 1} of process {self.rank}'s part has "
                            f"{column!r} of type {type(value).__name__}, not text")
        self._documents += 1
        return value

    def _encode(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        eos = self.tokenizer.eos_token_id
        encoded = self.tokenizer(texts)["input_ids"]
        return [ids if ids and ids[-1] == eos else [*ids, eos] for ids in encoded]

    def next_row(self) -> list[tuple[list[int], list[int]]]:
        """The next packed row: document pieces of `sequence_len` tokens in all."""
        pieces, room = [], self.sequence_len
        while room:
            if self._used == len(self._batch) and not self._read_batch():
                raise UserError(
                    f"pretraining_dataset[0]: the corpus ran out after {self.rows_served} rows of {self.sequence_len} "
                    f"tokens on process {self.rank}; lower max_steps or give a larger corpus"
                )
            if self._used == len(self._batch):
                continue
            doc = self._batch[self._used]
            piece = doc[self._offset:self._offset + room]
            pieces.append((piece, list(piece)))
            room -= len(piece)
            self._offset += len(piece)
            if self._offset == len(doc):
                self._used, self._offset = self._used + 1, 0
        self.rows_served += 1
        return pieces

    # ------------------------------------------------------------------ resume

    def state_dict(self) -> dict[str, Any]:
        return {"rows_served": self.rows_served, "source": self._batch_state, "used": self._used,
                "offset": self._offset, "documents": self._documents, "rank": self.rank,
                "world_size": self.world_size, "fingerprint": self.fingerprint}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where `state` stood: reopen the source at the current batch's start, read that
        batch again, and step over what was served of it."""
        if (state["rank"], state["world_size"]) != (self.rank, self.world_size):
            raise UserError(f"resume_from_checkpoint: the stream position was saved by process {state['rank']} of "
                            f"{state['world_size']}, not {self.rank} of {self.world_size}")
        self._source = open_stream(self.spec, self.rank, self.world_size)
        self._iterator, self._batch, self._batch_state = None, [], None
        self.rows_served, self._documents = state["rows_served"], 0
        batch = state["source"]
        if batch is not None:  # a batch was read: read it again from where it started
            if batch["source"] is not None:
                self._source.load_state_dict(batch["source"])
            self._read_batch(resumed_at=batch["source"])
        self._documents = state["documents"]
        self._used, self._offset = state["used"], state["offset"]


@dataclass
class StreamBatches:
    """Micro-batches of packed stream rows (the `Units` of tuner.train.objectives.base): the
    loop's unit indices only say how many rows a micro-batch takes; they come in stream order."""

    stream: TokenStream
    pad_token_id: int
    units: int  # rows the whole run draws (all processes)
    efficiency: float = 1.0  # every row is full

    @classmethod
    def of(cls, stream: TokenStream, cfg: TunerConfig, pad_token_id: int) -> StreamBatches:
        return cls(stream, pad_token_id, run_rows(cfg, stream.world_size))

    def batch(self, units: Sequence[int]) -> dict[str, Any]:
        from tuner.data.pack import packed_batch

        return packed_batch([self.stream.next_row() for _ in units], self.pad_token_id)

    def tokens(self, units: Sequence[int]) -> int:
        return len(units) * self.stream.sequence_len

    def state_dict(self) -> dict[str, Any]:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stream.load_state_dict(state)


@dataclass
class StreamData:
    """What the data stage hands the loop for a `pretraining_dataset` run (in place of
    pipeline.PreparedData): the stream as `train`, no evaluation rows."""

    train: TokenStream
    fingerprint: str
    rows: int  # packed rows the run draws, all processes together
    eval: None = None
    chat_template: None = None

    @property
    def num_rows(self) -> int:
        return self.rows

    def summary(self) -> str:
        spec = self.train.spec
        skip = f", skipping its first {spec.skip} rows" if spec.skip else ""
        parts = f", process {self.train.rank} of {self.train.world_size} reading its own part" \
            if self.train.world_size > 1 else ""
        return (f"pretraining_dataset: streaming {spec.path} (column {spec.text_column!r}{skip}{parts}), tokenized "
                f"on the fly into {self.rows:,} packed rows of {self.train.sequence_len} tokens")


def run_rows(cfg: TunerConfig, world_size: int) -> int:
    """Packed rows a run of max_steps draws, all processes together."""
    t = cfg.training
    if t.max_steps is None:
        raise UserError("max_steps: a pretraining_dataset run needs max_steps (the corpus length is not known)")
    return t.max_steps * t.gradient_accumulation_steps * t.micro_batch_size * world_size


def stream_data(cfg: TunerConfig, tokenizer: Any, tokenizer_files: Sequence[Path], rank: int,
                world_size: int) -> StreamData:
    """The stream of a `pretraining_dataset` run for process `rank` of `world_size`."""
    rows = run_rows(cfg, world_size)
    fp = corpus_fingerprint(cfg, tokenizer_files)
    stream = TokenStream(cfg.data.pretraining_dataset[0], tokenizer, cfg.data.sequence_len, rank, world_size,
                         fingerprint=fp, planned_rows=rows)
    return StreamData(stream, fp, rows)
