"""Worker (bench venv): train SmolLM2 + LoRA with TRL's SFTTrainer and report per-step statistics.

    python bench/_run_trl.py --mode unpacked|packed|padding_free --dump dump.json --data rows.jsonl \
        --steps N --out result.json [--check-labels]

Modes
  unpacked      prompt/completion rows, completion_only_loss=True, right-padded batches of
                `--batch` rows (8), in tuner's row order (train_sampling_strategy="sequential"
                on a dataset reordered by tuner's epoch-0 permutation), so each step sees the
                same rows as tuner's step.
  packed        packing=True (strategy "bfd", which turns padding_free on): packed rows of
                up to max_length tokens; the per-device batch is chosen so a step holds 8
                source rows on average (see --packed-batch); TRL's own random sampler.
  padding_free  padding_free=True without packing: exactly tuner's 8 rows per step,
                concatenated into one sequence (position_ids restart per row).

Same base folder (the one tuner converted), bf16 autocast (bf16=True; --precision fp32: none,
for CPUs without fast bf16 matmuls) with the frozen base
weights in `--base-dtype` (bf16 by default, as tuner holds them with an adapter under bf16;
fp32 for tuner versions before that) and fp32 LoRA weights,
LoRA r16/alpha32/dropout 0 on "all-linear", fused torch AdamW, 2 threads, no gradient
checkpointing (TRL's SFTConfig turns it on by default; tuner's default is off).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_WITHOUT_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


def alpaca_prompt(row: dict) -> str:
    if row.get("input"):
        return ALPACA_WITH_INPUT.format(instruction=row["instruction"], input=row["input"])
    return ALPACA_WITHOUT_INPUT.format(instruction=row["instruction"])


def batch_stats(batch: dict, n_examples: int) -> dict:
    ids, labels = batch["input_ids"], batch["labels"]
    if "attention_mask" in batch:
        real = int(batch["attention_mask"].sum())
        lengths = [int(x) for x in batch["attention_mask"].sum(dim=1)]
    else:  # padding-free: one flattened row; documents start where position_ids restart at 0
        pos = batch["position_ids"][0]
        starts = (pos == 0).nonzero().flatten().tolist() + [pos.numel()]
        lengths = [b - a for a, b in zip(starts, starts[1:])]
        real = sum(lengths)
    return {
        "trained": int((labels[:, 1:] != -100).sum()),
        "real": real,
        "slots": ids.numel(),
        "rows": len(lengths),
        "examples": n_examples,  # what the collator received: rows, or packed rows
        "attn_pairs": sum(n * (n + 1) // 2 for n in lengths),
        "attn_computed": sum(ids.shape[1] ** 2 for _ in range(ids.shape[0])),
        "lengths": lengths,
    }


def pad_batch(input_ids, labels, pad_id):
    """tuner's collator (tuner.data.pack.pad_batch), restated so this check does not import tuner."""
    width = max(len(x) for x in input_ids)
    out_ids = torch.full((len(input_ids), width), pad_id, dtype=torch.long)
    out_labels = torch.full((len(input_ids), width), -100, dtype=torch.long)
    mask = torch.zeros((len(input_ids), width), dtype=torch.long)
    for i, (a, b) in enumerate(zip(input_ids, labels)):
        out_ids[i, : len(a)] = torch.tensor(a)
        out_labels[i, : len(a)] = torch.tensor(b)
        mask[i, : len(a)] = 1
    return {"input_ids": out_ids, "attention_mask": mask, "labels": out_labels}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["unpacked", "packed", "padding_free"], required=True)
    ap.add_argument("--dump", required=True, help="_tuner_dump.py output (base folder, tuner's rows and order)")
    ap.add_argument("--data", required=True, help="the alpaca JSONL tuner trained on")
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--packed-batch", type=int, default=None, help="packed rows per step (default: ~8 source rows)")
    ap.add_argument("--sequence-len", type=int, default=512)
    ap.add_argument("--lr", type=float, required=True)
    ap.add_argument("--warmup-steps", type=int, default=2)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--lora-alpha", type=float, default=32)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--base-dtype", choices=["fp32", "bf16"], default="bf16",
                    help="dtype of the frozen base weights (LoRA weights stay fp32: peft upcasts adapters)")
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16",
                    help="bf16: accelerate's bf16 autocast (bf16=True); fp32: no mixed precision (CPUs without AMX)")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--check-labels", action="store_true")
    ap.add_argument("--out", required=True)
    ap.add_argument("--probe", default=None, help="write bench/_memprobe.py's readings here (JSON)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    probe = None
    if args.probe:  # where the memory is: bench/_memprobe.py (started after torch's import)
        import _memprobe

        probe = _memprobe.Probe().start()

    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    if probe is not None:
        probe.mark("libraries imported")

    dump = json.loads(Path(args.dump).read_text())
    base = dump["base_path"]
    raw = [json.loads(line) for line in Path(args.data).read_text().splitlines() if line.strip()]
    if len(raw) != len(dump["rows"]):
        raise SystemExit(f"tuner kept {len(dump['rows'])} of {len(raw)} rows; the row order would not match")
    pc_rows = [{"prompt": alpaca_prompt(r), "completion": r["output"]} for r in raw]
    order = dump["order"]
    if args.mode != "packed":
        pc_rows = [pc_rows[i] for i in order]  # tuner's epoch-0 order, read sequentially
    dataset = Dataset.from_list(pc_rows)

    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    packed_batch = None
    pack_info = None
    if args.mode == "packed":
        # Rows per packed sequence, from TRL's own BFD packer on the tokenized lengths.
        from trl.data_utils import pack_dataset

        lengths = [len(r["input_ids"]) for r in dump["rows"]]
        probe = Dataset.from_dict({"input_ids": [[0] * n for n in lengths]})
        packed = pack_dataset(probe, args.sequence_len, "bfd")
        rows_per_pack = len(lengths) / packed.num_rows
        packed_batch = args.packed_batch or max(1, round(args.batch / rows_per_pack))
        pack_info = {"packs": packed.num_rows, "rows_per_pack": rows_per_pack, "packed_batch": packed_batch,
                     "mean_pack_tokens": sum(lengths) / packed.num_rows}

    base_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.base_dtype]
    model = AutoModelForCausalLM.from_pretrained(base, dtype=base_dtype, attn_implementation="sdpa")
    model.config.use_cache = False
    peft_config = LoraConfig(
        r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=0.0, target_modules="all-linear",
        bias="none", task_type="CAUSAL_LM",
    )
    config = SFTConfig(
        output_dir=str(Path(args.workdir) / "trl-out"),
        max_steps=args.steps,
        per_device_train_batch_size=packed_batch or args.batch,
        gradient_accumulation_steps=1,
        learning_rate=args.lr,
        lr_scheduler_type="cosine",
        warmup_steps=args.warmup_steps,
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch_fused",
        bf16=args.precision == "bf16",
        use_cpu=True,
        gradient_checkpointing=False,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=args.seed,
        data_seed=args.seed,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        max_length=args.sequence_len if args.mode != "padding_free" else None,
        packing=args.mode == "packed",
        packing_strategy="bfd",
        padding_free=args.mode in ("packed", "padding_free"),
        completion_only_loss=True,
        train_sampling_strategy="sequential" if args.mode != "packed" else "random",
    )

    timeline: dict = {"step_end": []}

    class Timer(TrainerCallback):
        def on_train_begin(self, args_, state, control, **kw):
            timeline["train_begin"] = time.time()
            timeline["train_begin_pc"] = time.perf_counter()
            if probe is not None:
                probe.mark("setup done")

        def on_step_end(self, args_, state, control, **kw):
            timeline["step_end"].append((time.time(), time.perf_counter()))
            if probe is not None:
                probe.mark(f"step {state.global_step}")

    t_init = time.perf_counter()
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config, callbacks=[Timer()])
    init_seconds = time.perf_counter() - t_init

    # Record what every batch the trainer runs actually holds.
    collator = trainer.data_collator
    seen: list[dict] = []

    def recording_collator(examples):
        batch = collator(examples)
        seen.append(batch_stats(batch, len(examples)))
        return batch

    trainer.data_collator = recording_collator

    label_check = None
    if args.check_labels:
        label_check = check_labels(trainer, dump, order, args.mode, collator, tokenizer.pad_token_id, args.batch)

    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    base_dtype = next(p.dtype for n, p in trainer.model.named_parameters() if "q_proj.base_layer" in n)
    lora_dtype = next(p.dtype for n, p in trainer.model.named_parameters() if "lora_A" in n)
    trainer.train()

    ends = timeline["step_end"]
    starts = [timeline["train_begin_pc"]] + [pc for _, pc in ends[:-1]]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    steps = []
    for i, ((wall, pc), start) in enumerate(zip(ends, starts)):
        stat = dict(seen[i]) if i < len(seen) else {}
        stat.update({"step": i + 1, "time": wall, "duration": pc - start, "loss": losses[i] if i < len(losses) else None})
        steps.append(stat)

    result = {
        "contender": {"unpacked": "trl_unpacked", "packed": "trl_packed", "padding_free": "trl_padding_free"}[args.mode],
        "trl_version": trl.__version__,
        "train_begin": timeline["train_begin"],
        "train_end": ends[-1][0],
        "init_seconds": init_seconds,
        "steps": steps,
        "trainable": trainable,
        "base_weight_dtype": str(base_dtype),
        "lora_weight_dtype": str(lora_dtype),
        "mixed_precision": str(trainer.accelerator.mixed_precision),
        "threads": torch.get_num_threads(),
        "per_device_train_batch_size": config.per_device_train_batch_size,
        "pack_info": pack_info,
        "prepared_rows": trainer.train_dataset.num_rows,
        "label_check": label_check,
    }
    Path(args.out).write_text(json.dumps(result))
    if probe is not None:
        probe.stop()
        probe.write(args.probe)


def check_labels(trainer, dump, order, mode, collator, pad_id, batch_size) -> dict:
    """Compare TRL's prepared rows and collated labels with tuner's prepared rows."""
    tuner_rows = dump["rows"]
    prepared = trainer.train_dataset
    out: dict = {"mode": mode}
    if mode in ("unpacked", "padding_free"):
        mismatched_ids = mismatched_labels = 0
        first_bad = None
        for i in range(prepared.num_rows):
            t = tuner_rows[order[i]]
            p = prepared[i]
            ids_ok = list(p["input_ids"]) == list(t["input_ids"])
            lab_ok = list(p["labels"]) == list(t["labels"])
            mismatched_ids += not ids_ok
            mismatched_labels += not lab_ok
            if first_bad is None and not (ids_ok and lab_ok):
                first_bad = {"row": order[i], "trl_ids": list(p["input_ids"])[-12:], "tuner_ids": t["input_ids"][-12:],
                             "trl_labels": list(p["labels"])[-12:], "tuner_labels": t["labels"][-12:]}
        out.update(rows_compared=prepared.num_rows, rows_input_ids_differ=mismatched_ids,
                   rows_labels_differ=mismatched_labels, first_difference=first_bad)
        # One row through each collator: TRL's collated labels vs tuner's prepared labels.
        row0 = tuner_rows[order[0]]
        trl_batch = collator([prepared[0]])
        lab = trl_batch["labels"][0].tolist()
        trained = [(k, x) for k, x in enumerate(row0["labels"]) if x != -100]
        out["one_row"] = {
            "tuner_row": order[0],
            "length": len(row0["input_ids"]),
            "prompt_tokens_masked": sum(1 for x in row0["labels"] if x == -100),
            "trained_tokens": len(trained),
            "last_trained_is_eos": trained[-1][1] == trainer.processing_class.eos_token_id,
            "trl_collated_labels_equal_tuner_labels": (
                lab == row0["labels"] if mode == "unpacked"
                else [x for x in lab] == [-100] + row0["labels"][1:]  # padding-free masks position 0
            ),
        }
        if mode == "unpacked":
            # The first full step: TRL's collated batch vs tuner's pad_batch on the same 8 rows.
            idx = order[:batch_size]
            t_batch = pad_batch([tuner_rows[i]["input_ids"] for i in idx], [tuner_rows[i]["labels"] for i in idx], pad_id)
            r_batch = collator([prepared[i] for i in range(batch_size)])
            out["first_step_batch_equal"] = {
                k: bool(torch.equal(t_batch[k], r_batch[k])) for k in ("input_ids", "labels", "attention_mask")
            }
    else:
        # Packed: split each packed row at its documents and compare the multiset of (ids, labels) rows.
        from collections import Counter

        docs = Counter()
        for p in prepared:
            start = 0
            for n in p["seq_lengths"]:
                docs[(tuple(p["input_ids"][start:start + n]), tuple(p["labels"][start:start + n]))] += 1
                start += n
        want = Counter((tuple(r["input_ids"]), tuple(r["labels"])) for r in tuner_rows)
        out.update(packed_rows=prepared.num_rows, documents=sum(docs.values()), tuner_rows=len(tuner_rows),
                   same_documents_and_labels=docs == want,
                   trained_tokens_trl=sum(sum(1 for x in lab[1:] if x != -100) for (_, lab) in docs.elements()),
                   trained_tokens_tuner=sum(sum(1 for x in r["labels"][1:] if x != -100) for r in tuner_rows))
    return out


if __name__ == "__main__":
    main()
