"""Where `tuner preprocess` spends its CPU: py-spy's collapsed stacks aggregated into phases.

    python3 -m venv /tmp/pyspy-venv && /tmp/pyspy-venv/bin/pip install py-spy   # never in tuner's venv
    /tmp/pyspy-venv/bin/py-spy record -r 100 --subprocesses -f raw -o prof.raw -- \
        .venv/bin/python -m tuner preprocess CONFIG.yml --dataset_num_proc 2
    python3 bench/_preprocess_profile.py prof.raw 100

Each sample goes to the first phase (in the order below) whose marker appears in its stack.
Seconds = samples / rate: seconds in which a Python thread was running or runnable (py-spy leaves
idle ones out), summed over the processes (forked workers included); on a loaded machine a
runnable thread waiting for a core counts too, so read the shares rather than the seconds.
"""
from __future__ import annotations

import sys
from collections import Counter

PHASES = [
    ("import torch", ("torch/__init__.py",)),
    ("other imports", ("_find_and_load",)),
    ("read the JSON file (load_dataset)", ("load_source (", "load_hub (")),
    ("fingerprint (sha256 of data + tokenizer files)", ("fingerprint (", "file_sha256 (")),
    ("config load + validation", ("load_config (",)),
    ("model config read (AutoConfig)", ("model_config (",)),
    ("tokenizer load", ("load_tokenizer_and_new_ids (", "_from_pretrained (")),
    ("chat template rendering (jinja)", ("apply_chat_template (",)),
    ("tokenizer output to Python lists", ("_convert_encoding (",)),
    ("tokenizer (Rust, batched)", ("encode_batch (", "_batch_encode_plus (", "_encode_plus (")),
    ("raw rows to Python (datasets slicing)", ("__getitem__ (datasets/arrow_dataset", "_getitem (datasets")),
    ("tokenized rows to Arrow", ("from_pydict (", "concat_tables (", "_arrow_array (", "arrow_writer")),
    ("chat: messages, locating turns, labels", ("locate (", "_content_labels (", "_end_tokens (", "messages (tuner", "_first_after (")),
    ("labels + length policy (per-row Python)", ("encode_segments (", "finish_row (", "_tokenize_batch (", "encode_many (")),
    ("totals (rows, tokens, trained tokens)", ("_totals (",)),
    ("save_to_disk + reload", ("save (tuner/data/cache", "load (tuner/data/cache", "save_to_disk (", "load_from_disk (")),
    ("datasets map machinery", ("map (datasets",)),
    ("worker pool (fork, moving results)", ("_encode_source (", "multiprocessing")),
    ("per-source stats, kept rows", ("_tokenize_source (",)),
]


def main() -> None:
    path, rate = sys.argv[1], float(sys.argv[2])
    counts: Counter[str] = Counter()
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            if not n.isdigit():
                continue
            for name, markers in PHASES:
                if any(m in stack for m in markers):
                    counts[name] += int(n)
                    break
            else:  # no Python frame: interpreter start-up and exit, or a thread idling in C
                counts["interpreter start/exit, other"] += int(n)
    total = sum(counts.values())
    print(f"{total / rate:.2f} s sampled")
    for name, n in counts.most_common():
        print(f"  {name:48s} {n / rate:7.2f} s {100 * n / total:5.1f}%")


if __name__ == "__main__":
    main()
