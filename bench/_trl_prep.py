"""Worker (bench venv): TRL's SFT dataset preparation in a fresh process, phase by phase.

    python bench/_trl_prep.py --data rows.jsonl --kind alpaca|chat --tokenizer BASE_FOLDER --out phases.json

What a TRL user runs before training: `datasets.load_dataset("json", ...)` (cold: the
harness gives each run an empty HF_DATASETS_CACHE), a map to TRL's prompt/completion form
(alpaca: the Alpaca prompt text as tuner renders it; chat: [user] / [assistant] messages),
then SFTTrainer's own preparation (`SFTTrainer._prepare_dataset`: add EOS, tokenize, build
completion-only labels, truncate to max_length 512, drop rows with nothing to train). It is
called on a stand-in `self` holding the three attributes it reads, so no model is loaded;
this is private API (TRL 1.16) and may move.
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--kind", choices=["alpaca", "chat"], default="alpaca")
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--num-proc", type=int, default=None)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    phases: dict[str, float] = {}

    t = time.perf_counter()
    import torch

    torch.set_num_threads(2)
    phases["import_torch"] = time.perf_counter() - t
    t = time.perf_counter()
    import datasets
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    phases["import_trl_transformers_datasets"] = time.perf_counter() - t
    t = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    phases["load_tokenizer"] = time.perf_counter() - t

    t = time.perf_counter()
    raw = datasets.load_dataset("json", data_files=args.data, split="train")
    phases["load_dataset"] = time.perf_counter() - t

    t = time.perf_counter()
    if args.kind == "alpaca":
        from _run_trl import alpaca_prompt

        ds = raw.map(lambda r: {"prompt": alpaca_prompt(r), "completion": r["output"]},
                     remove_columns=raw.column_names, num_proc=args.num_proc)
    else:
        ds = raw  # already TRL's conversational language-modelling form: a `messages` column
    phases["to_prompt_completion"] = time.perf_counter() - t

    t = time.perf_counter()
    # Alpaca: prompt/completion rows with completion-only labels. Chat: whole conversations;
    # SmolLM2's template has no {% generation %} markers, so assistant_only_loss cannot be used
    # and TRL tokenizes without a label mask.
    config = SFTConfig(output_dir=args.workdir, use_cpu=True, report_to="none", max_length=args.max_length,
                       completion_only_loss=args.kind == "alpaca", dataset_num_proc=args.num_proc)

    class Stub:  # the attributes SFTTrainer._prepare_dataset reads from `self`
        _tokenizer = tokenizer
        completion_only_loss = args.kind == "alpaca"
        chat_template = None

    prepared = SFTTrainer._prepare_dataset(Stub(), ds, tokenizer, config, False, None, "train")
    phases["sft_prepare_dataset"] = time.perf_counter() - t

    if "labels" in prepared.column_names:
        labels = prepared.with_format("numpy")["labels"]
        trained = int(sum(int((lab[1:] != -100).sum()) for lab in labels))
    elif "completion_mask" in prepared.column_names:
        trained = int(sum(sum(m[1:]) for m in prepared["completion_mask"]))
    else:  # no mask: every token but the first is trained
        trained = int(sum(len(ids) - 1 for ids in prepared["input_ids"]))
    out = {"phases": phases, "since_interpreter_start": time.perf_counter() - T0, "rows": prepared.num_rows,
           "trained_tokens": trained, "columns": prepared.column_names}
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(out, fh)


if __name__ == "__main__":
    main()
