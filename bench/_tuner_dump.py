"""Worker (tuner's venv): prepare the data with tuner and dump what the other workers need.

    python bench/_tuner_dump.py CONFIG.yml --steps N --out dump.json

Writes: the converted base folder, tuner's prepared rows (input_ids, labels) in dataset
order, the row order of epoch 0 (tuner's StepPlan), per-step batch statistics for the first
N steps (replaying tuner's plan and batches, padded or packed, which are deterministic), and
the parameter counts of the LoRA model (peft "all-linear", r/alpha as given). Not timed.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--lora-alpha", type=float, default=32)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from tuner.config import load_config
    from tuner.data.pipeline import prepare
    from tuner.models.load import load_tokenizer, resolve_base, tokenizer_files
    from tuner.train.step_plan import StepPlan

    t0 = time.perf_counter()
    cfg = load_config(args.config)
    base = resolve_base(cfg.model)
    tokenizer = load_tokenizer(cfg.model, base)
    if isinstance(tokenizer, tuple):  # some tuner versions return (tokenizer, new token ids)
        tokenizer = tokenizer[0]
    data = prepare(cfg, tokenizer, tokenizer_files(cfg.model, base))
    rows = data.train
    ids = rows["input_ids"]
    labels = rows["labels"]
    d = cfg.data
    packing = bool(getattr(d, "sample_packing", False))

    # tuner's batches, replayed: `Batches` (tuner with sample packing) or `pad_batch` (before it).
    try:
        from tuner.data.pack import Batches

        batches = Batches(rows, tokenizer.pad_token_id, d.sequence_len, packing,
                          getattr(d, "pad_to_multiple_of", None), getattr(d, "pad_to_sequence_len", False))
        units, bins = batches.units, batches.bins
        make = batches.batch
    except ImportError:
        from tuner.data.pack import pad_batch

        units, bins = rows.num_rows, None
        make = lambda idx: pad_batch([ids[i] for i in idx], [labels[i] for i in idx], tokenizer.pad_token_id)  # noqa: E731
    bins_if_packed = None
    try:
        from tuner.data.pack import pack_rows

        bins_if_packed = len(pack_rows([len(x) for x in ids], d.sequence_len))
    except ImportError:
        pass

    plan = StepPlan.build(units, cfg.training, 1)
    steps = []
    for step, _epoch, micro_batches in plan.steps(0):
        if step >= args.steps:
            break
        stat = {"trained": 0, "real": 0, "slots": 0, "rows": 0, "attn_pairs": 0, "lengths": []}
        for unit_ids in micro_batches:
            batch = make(unit_ids)
            stat["trained"] += int((batch["labels"][:, 1:] != -100).sum())
            stat["slots"] += batch["input_ids"].numel()
            members = [i for u in unit_ids for i in bins[u]] if bins is not None else list(unit_ids)
            for i in members:
                n = len(ids[i])
                stat["real"] += n
                stat["rows"] += 1
                stat["attn_pairs"] += n * (n + 1) // 2
                stat["lengths"].append(n)
        steps.append(stat)

    # Parameter counts of the LoRA model (peft's "all-linear", as tuner's lora_target_linear).
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base.path), dtype=torch.float32)
    n_matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    head = model.get_output_embeddings().weight.numel()
    text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    model = get_peft_model(model, LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=0.0,
                                             target_modules="all-linear", bias="none", task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())

    out = {
        "base_path": str(base.path),
        "fingerprint": data.fingerprint,
        "prepared_path": str(data.path),
        "rows": [{"input_ids": list(a), "labels": list(b)} for a, b in zip(ids, labels)],
        "packing": packing,
        "units": units,
        "bins_if_packed": bins_if_packed,
        "order": plan.epoch_order(0),
        "steps": steps,
        "params": {
            "n_matmul_frozen": n_matmul,  # every nn.Linear weight, the (tied) LM head included
            "lm_head": head,
            "n_lora": trainable,
            "total": total,
            "n_layers": text.num_hidden_layers,
            "d_attn": text.num_attention_heads * head_dim,
        },
        "seconds": time.perf_counter() - t0,
    }
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(out, fh)


if __name__ == "__main__":
    main()
