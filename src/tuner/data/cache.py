"""The prepared-dataset cache: a fingerprint of everything that changes tokens, and an
atomic, verified store of tokenized rows under `dataset_prepared_path/<fingerprint>/`.

The fingerprint covers: tokenizer file contents, data file contents (or the `datasets`
library's fingerprint for hub data), the config keys that change tokens, and tuner's
version. Keys that do not change tokens (learning_rate, val_set_size, seed, ...) are left
out, so changing them reuses the prepared data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner import __version__
from tuner.config.schema import TunerConfig
from tuner.fsutil import atomic_folder

if TYPE_CHECKING:
    from datasets import Dataset

log = logging.getLogger("tuner")

META = "meta.json"
LOCKS = ".locks"  # lock files, beside the prepared folders; never prepared data themselves
ROWS = "rows"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def token_keys(cfg: TunerConfig, key: str = "datasets") -> dict[str, Any]:
    """The config keys whose values change the prepared tokens of `datasets` (or `test_datasets`)."""
    d, m, p = cfg.data, cfg.model, cfg.preference
    return {
        key: [_dataset_keys(ds) for ds in getattr(d, key) or []],
        "sequence_len": d.sequence_len,
        "excess_length_strategy": d.excess_length_strategy,
        "train_on_inputs": d.train_on_inputs,
        "eot_tokens": d.eot_tokens,
        # what a prepared row holds (SFT sequences, preference pairs, KTO examples) and how pairs are cut
        "rows": None if p.rl is None else "unpaired" if p.rl == "kto" else "pair",
        "max_prompt_len": p.max_prompt_len if p.rl else None,
        "tokenizer_type": m.tokenizer_type,
        "tokenizer_use_fast": m.tokenizer_use_fast,
        "special_tokens": m.special_tokens.model_dump(mode="json") if m.special_tokens else None,
        "tokens": m.tokens,
        # keys added later: in the fingerprint only when set, so data prepared before them is still reused
        **{k: v for k, v in (("min_sample_len", d.min_sample_len), ("tokenizer_legacy", m.tokenizer_legacy),
                             ("dataset_exact_deduplication", d.dataset_exact_deduplication or None)) if v is not None},
        **({"mix_strategy": d.mix_strategy, "interleave_probs": d.interleave_probs, "mixture_seed": cfg.training.seed}
           if key == "datasets" and (d.mix_strategy != "concat" or any(ds.weight is not None for ds in d.datasets))
           else {}),
    }


# Dataset keys added after data was first prepared: in the fingerprint only when set, so that data
# prepared before them is still reused.
LATER_DATASET_KEYS = ("overlap_len", "weight")


def _dataset_keys(ds: Any) -> dict[str, Any]:
    values = ds.model_dump(mode="json")
    return {k: v for k, v in values.items() if not (k in LATER_DATASET_KEYS and v is None)}


def fingerprint(
    cfg: TunerConfig, key: str, tokenizer_files: list[Path], data_ids: list[str], template: str | None = None
) -> tuple[str, dict[str, Any]]:
    """(hex fingerprint, the inputs it was computed from).

    `data_ids` identifies the data contents: sha256 of each local file, or a hub dataset's
    own fingerprint. `template` is the chat template text the rows are rendered with.
    """
    inputs = {
        "tuner_version": __version__,
        "keys": token_keys(cfg, key),
        "tokenizer_files": {p.name: file_sha256(p) for p in tokenizer_files},
        "chat_template": hashlib.sha256(template.encode()).hexdigest() if template else None,
        "data": data_ids,
    }
    blob = json.dumps(inputs, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:20], inputs


def lock(root: Path, fp: str) -> Any:
    """A file lock beside the prepared folder (held while checking for it and preparing it)."""
    from filelock import FileLock

    folder = root / LOCKS
    folder.mkdir(parents=True, exist_ok=True)
    return FileLock(str(folder / f"{fp}.lock"))


def load(root: Path, fp: str) -> tuple[Dataset, dict[str, Any]] | None:
    """The prepared rows and their metadata, or None when absent, partial or corrupt."""
    folder = root / fp
    if not folder.is_dir():
        return None
    from datasets import load_from_disk

    try:
        meta = json.loads((folder / META).read_text())
        if meta.get("fingerprint") != fp:
            raise ValueError("fingerprint in meta.json does not match the folder")
        rows = load_from_disk(str(folder / ROWS))
        if rows.num_rows != meta["stats"]["rows"]:
            raise ValueError(f"{rows.num_rows} rows stored, meta.json says {meta['stats']['rows']}")
    except Exception as err:  # noqa: BLE001 - any failure means: do not trust this folder
        log.warning("prepared dataset %s is incomplete or corrupt (%s); preparing it again", folder, err)
        shutil.rmtree(folder, ignore_errors=True)
        return None
    return rows, meta


def save(root: Path, fp: str, rows: Dataset, meta: dict[str, Any]) -> Path:
    """Write rows + meta.json to a temporary folder, then rename it into place."""
    with atomic_folder(root / fp) as tmp:
        rows.save_to_disk(str(tmp / ROWS))
        (tmp / META).write_text(json.dumps({**meta, "fingerprint": fp}, indent=2, sort_keys=True))
    return root / fp


@contextmanager
def scratch(root: Path, fp: str) -> Iterator[Path]:
    """A folder beside the prepared one that holds the tokenized rows while they are made (written to
    disk as they come, so that preparing needs little memory however large the data), removed once
    they are saved. Used under `lock`, so what a killed run left for this fingerprint is removed first."""
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(f".{fp}.scratch-*"):
        shutil.rmtree(stale, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{fp}.scratch-", dir=root))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
