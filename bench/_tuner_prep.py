"""Worker (tuner's venv): tuner's data preparation in a fresh process, phase by phase.

    python bench/_tuner_prep.py CONFIG.yml --out phases.json [--expect cold|cached]

Phases (seconds, perf_counter): import torch; import the libraries (tuner, datasets,
transformers with its modeling code, which any training process imports before loading a
model; imported lazily, it would land in whichever phase touches it first); load_config; resolve_base (the converted base folder, config read);
load_tokenizer; prepare (fingerprint = sha256 of data + tokenizer files, then tokenize and save,
or load the cached rows). `--expect` makes the run fail if the cache was (not) reused.
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--out", required=True)
    ap.add_argument("--expect", choices=["cold", "cached"], default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    phases: dict[str, float] = {}

    t = time.perf_counter()
    import torch  # noqa: F401

    phases["import_torch"] = time.perf_counter() - t
    t = time.perf_counter()
    import datasets  # noqa: F401
    import transformers  # noqa: F401
    import transformers.modeling_utils  # noqa: F401  (what loading any model imports; lazy otherwise)

    from tuner.config import load_config
    from tuner.data.pipeline import prepare
    from tuner.models.load import load_tokenizer, resolve_base, tokenizer_files

    phases["import_libraries"] = time.perf_counter() - t
    t = time.perf_counter()
    cfg = load_config(args.config)
    phases["load_config"] = time.perf_counter() - t
    t = time.perf_counter()
    base = resolve_base(cfg.model)
    phases["resolve_base"] = time.perf_counter() - t
    t = time.perf_counter()
    tokenizer = load_tokenizer(cfg.model, base)
    phases["load_tokenizer"] = time.perf_counter() - t
    t = time.perf_counter()
    data = prepare(cfg, tokenizer, tokenizer_files(cfg.model, base))
    phases["prepare"] = time.perf_counter() - t
    if args.expect == "cached" and not data.reused:
        raise SystemExit("expected the prepared data to come from the cache, but it was rebuilt")
    if args.expect == "cold" and data.reused:
        raise SystemExit("expected a cold preparation, but the cache was reused")
    t_end = time.perf_counter() - T0
    trained = None
    if args.expect != "cached":  # a sanity total for the report; not part of the cached-load timing
        labels = data.train.with_format("numpy")["labels"]
        trained = int(sum(int((lab[1:] != -100).sum()) for lab in labels))
    out = {
        "phases": phases,
        "since_script_start": t_end,
        "rows": data.train.num_rows,
        "reused": data.reused,
        "trained_tokens": trained,
        "stats": {k: v for k, v in data.stats.items() if k != "sources"},
    }
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(out, fh)


if __name__ == "__main__":
    main()
