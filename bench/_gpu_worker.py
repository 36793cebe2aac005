"""Workers for bench/gpu_check.py, one process each (the harness never imports torch).

    python bench/_gpu_worker.py setup     --spec spec.json --out setup.json
    python bench/_gpu_worker.py case      --out case.json -- train config.yml [overrides]
    python bench/_gpu_worker.py attention --out attention.json --backends sdpa,eager,flex_attention
    python bench/_gpu_worker.py loss      --impl tuner|liger|cce --out loss.json [--tokens T --hidden H --vocab V]
    python bench/_gpu_worker.py trl       --model DIR --data rows.jsonl --seq S --batch B --steps N --out trl.json
    python bench/_gpu_worker.py compare   --a A.safetensors --b B.safetensors --out compare.json

`case` runs tuner's own command line (`tuner.cli.main`, what `python -m tuner` runs) and adds
what the command line cannot report: the process's peak `torch.cuda.max_memory_allocated`.
Every worker writes its JSON even when what it measures fails, with the error in it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

IGNORE = -100


def write(path: str, record: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(record, indent=1, default=str))


def device_facts() -> dict[str, Any]:
    import torch

    facts: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.cuda.is_available(),
                             "torch_cuda": torch.version.cuda, "cpus": os.cpu_count()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        facts.update(name=p.name, memory_bytes=p.total_memory, capability=f"{p.major}.{p.minor}",
                     multiprocessors=p.multi_processor_count, bf16=torch.cuda.is_bf16_supported())
    else:
        facts.update(name="CPU", memory_bytes=os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    return facts


def cuda_time_ms(fn, warmup: int, reps: int) -> list[float]:
    """Milliseconds of each of `reps` calls after `warmup` calls (CUDA events, or a host clock)."""
    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if torch.cuda.is_available():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - t0))
    return times


# --------------------------------------------------------------------------- setup


def matmul_peak(n: int, reps: int) -> dict[str, Any]:
    """bf16 matrix-product rate on random data: the median of `reps` timed n x n x n products."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator(device=device).manual_seed(0)
    pairs = [(torch.randn(n, n, device=device, generator=gen).bfloat16(),
              torch.randn(n, n, device=device, generator=gen).bfloat16()) for _ in range(2)]
    k = [0]

    def product() -> None:
        a, b = pairs[k[0] % 2]
        k[0] += 1
        a @ b

    times = cuda_time_ms(product, warmup=3, reps=reps)
    flops = 2 * n**3
    return {"n": n, "reps": reps, "device": device, "median_flops": flops / (statistics.median(times) / 1000),
            "best_flops": flops / (min(times) / 1000), "times_ms": times}


def cmd_setup(args: argparse.Namespace) -> None:
    """Random-weight models from the configs in the spec (bf16, made on the GPU when there is
    one), the tokenizer files copied beside them, and the device's bf16 matmul peak."""
    spec = json.loads(Path(args.spec).read_text())
    record: dict[str, Any] = {"models": {}}
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        record["device"] = device_facts()
        device = "cuda" if torch.cuda.is_available() else "cpu"
        for name, model in spec["models"].items():
            t0 = time.perf_counter()
            folder = Path(model["dir"])
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "config.json").write_text(json.dumps(model["config"], indent=2))
            shutil.copy(folder / "config.json", folder / "source_config.json")
            config = AutoConfig.from_pretrained(str(folder))
            torch.manual_seed(0)
            with torch.device(device):
                net = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
            net.save_pretrained(str(folder))
            for f in Path(spec["tokenizer"]).iterdir():
                if f.is_file():
                    shutil.copy(f, folder / f.name)
            record["models"][name] = {
                "dir": str(folder), "parameters": sum(p.numel() for p in net.parameters()),
                "seconds": time.perf_counter() - t0,
            }
            del net
            if device == "cuda":
                torch.cuda.empty_cache()
        record["peak"] = matmul_peak(spec["peak_n"], spec["peak_reps"])
    except Exception:  # noqa: BLE001 - reported in the JSON
        record["error"] = traceback.format_exc()
    write(args.out, record)


# --------------------------------------------------------------------------- case


def cmd_case(args: argparse.Namespace) -> None:
    """Run tuner's command line in this process; record its exit code and peak memory."""
    record: dict[str, Any] = {"argv": args.rest}
    t0 = time.perf_counter()
    rc: Any = 1
    try:
        from tuner.cli import main

        rc = main(args.rest)
    except SystemExit as stop:
        rc = stop.code
    except BaseException:  # noqa: BLE001 - a traceback from tuner: recorded, then the exit code says so
        record["error"] = traceback.format_exc()
        traceback.print_exc()
    finally:
        record.update(rc=rc, wall_s=time.perf_counter() - t0,
                      max_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            record.update(max_memory_allocated=torch.cuda.max_memory_allocated(),
                          max_memory_reserved=torch.cuda.max_memory_reserved())
        write(args.out, record)
    sys.exit(rc if isinstance(rc, int) else 1)


# --------------------------------------------------------------------------- attention


def cmd_attention(args: argparse.Namespace) -> None:
    """Each backend on packed rows: every document's per-token losses (and, where the backend
    has a backward, the gradients) equal those of the document run alone."""
    record: dict[str, Any] = {"backends": {}}
    try:
        import torch
        import torch.nn.functional as F
        from transformers import AutoModelForCausalLM, LlamaConfig

        record["device"] = device_facts()
        device = "cuda" if torch.cuda.is_available() else "cpu"
        shape = json.loads(args.shape)
        config = LlamaConfig(**shape, tie_word_embeddings=True, attention_dropout=0.0)
        torch.manual_seed(0)
        reference = AutoModelForCausalLM.from_config(config, dtype=torch.float32).state_dict()
        lengths = [int(x) for x in args.lengths.split(",")]
        gen = torch.Generator().manual_seed(1)
        docs = [torch.randint(0, config.vocab_size, (n,), generator=gen) for n in lengths]
        ids = torch.cat(docs)[None].to(device)
        positions = torch.cat([torch.arange(n) for n in lengths])[None].to(device)
        running = torch.arange(ids.shape[1], device=device)[None]
        for backend in args.backends.split(","):
            out: dict[str, Any] = {}
            record["backends"][backend] = out
            t0 = time.perf_counter()
            try:
                # flash-attention runs in half precision only; the others are checked in fp32.
                dtype = torch.bfloat16 if backend.startswith("flash") else torch.float32
                tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
                model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=backend)
                model.load_state_dict(reference)
                model.to(device=device, dtype=dtype).eval()
                out.update(dtype=str(dtype), tolerance=tol)

                def token_losses(input_ids, position_ids=None, model=model):
                    logits = model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits[0].float()
                    return F.cross_entropy(logits[:-1], input_ids[0, 1:], reduction="none")

                with torch.no_grad():
                    alone = [token_losses(d[None].to(device)) for d in docs]
                    packed_logits = model(input_ids=ids, position_ids=positions, use_cache=False).logits[0].float()
                    leaked_logits = model(input_ids=ids, position_ids=running, use_cache=False).logits[0].float()
                worst = worst_leak = 0.0
                at = 0
                for d, ref in zip(docs, alone):
                    span = slice(at, at + len(d))
                    target = d.to(device)[1:]
                    for logits, name in ((packed_logits, "packed"), (leaked_logits, "leaked")):
                        diff = float((F.cross_entropy(logits[span][:-1], target, reduction="none") - ref).abs().max())
                        if name == "packed":
                            worst = max(worst, diff)
                        else:
                            worst_leak = max(worst_leak, diff)
                    at += len(d)
                out.update(forward_max_abs_diff=worst, without_restart_max_abs_diff=worst_leak,
                           forward_ok=worst <= tol < worst_leak)
                out.update(backward_check(model, docs, ids, positions, device, tol))
                out["ok"] = out["forward_ok"] and out.get("backward_ok", True) is not False
            except Exception as err:  # noqa: BLE001 - a backend that fails is a result
                out.update(ok=False, error=f"{type(err).__name__}: {err}"[:500])
            out["seconds"] = round(time.perf_counter() - t0, 1)
            print(f"{backend}: {out}", flush=True)
            write(args.out, record)  # what is done so far, in case a later backend hangs
    except Exception:  # noqa: BLE001
        record["error"] = traceback.format_exc()
    write(args.out, record)


def backward_check(model, docs, ids, positions, device, tol) -> dict[str, Any]:
    """Gradients of the packed row's summed loss against the sum over documents run alone."""
    import torch.nn.functional as F

    def summed(input_ids, position_ids=None):
        logits = model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits[0].float()
        return F.cross_entropy(logits[:-1], input_ids[0, 1:], reduction="sum")

    params = [p for p in model.parameters() if p.requires_grad]
    try:
        model.zero_grad(set_to_none=True)
        total = 0.0
        for d in docs:
            loss = summed(d[None].to(device))
            loss.backward()
            total += float(loss.detach())
        alone = [p.grad.detach().clone() for p in params]
        model.zero_grad(set_to_none=True)
        # The packed loss without the cross-document terms: mask the first token of every document.
        labels = ids.clone()
        at = 0
        for d in docs:
            labels[0, at] = IGNORE
            at += len(d)
        logits = model(input_ids=ids, position_ids=positions, use_cache=False).logits[0].float()
        F.cross_entropy(logits[:-1], labels[0, 1:], ignore_index=IGNORE, reduction="sum").backward()
        packed = [p.grad.detach() for p in params]
    except Exception as err:  # noqa: BLE001 - flex attention has no CPU backward, for one
        return {"backward_ok": None, "backward": f"{type(err).__name__}: {err}"[:300]}
    num = math.sqrt(sum(float((a - b).float().pow(2).sum()) for a, b in zip(alone, packed)))
    den = math.sqrt(sum(float(a.float().pow(2).sum()) for a in alone))
    rel = num / max(den, 1e-30)
    return {"backward_grad_rel_diff": rel, "backward_ok": rel <= 10 * tol}


# --------------------------------------------------------------------------- loss


class _Decoded:
    def __init__(self, hidden):
        self.last_hidden_state = hidden


def tuner_head_loss():
    """tuner's head + loss (`tuner.train.loss.CausalLMLoss`) on given hidden states: a stand-in
    model whose decoder returns them and whose output head holds the given weight."""
    import types

    import torch
    import torch.nn.functional as F

    from tuner.train.loss import CausalLMLoss

    class Decoder(torch.nn.Module):
        def forward(self, input_ids=None, **kwargs):
            return _Decoded(self.hidden)

    class Head(torch.nn.Module):
        def forward(self, x):
            return F.linear(x, self.weight)

    class StandIn(torch.nn.Module):
        config = types.SimpleNamespace(model_type="llama", final_logit_softcapping=None)

        def __init__(self):
            super().__init__()
            self.decoder, self.lm_head = Decoder(), Head()

        def get_decoder(self):
            return self.decoder

        def get_output_embeddings(self):
            return self.lm_head

    stand_in = StandIn()
    loss = CausalLMLoss(stand_in, gathered_head=True)

    def run(hidden, weight, targets):
        # CausalLMLoss shifts (position t predicts label t + 1): one dummy position at the end.
        stand_in.lm_head.weight = weight
        stand_in.decoder.hidden = torch.cat([hidden, hidden.new_zeros(1, hidden.shape[1])])[None]
        labels = torch.cat([targets.new_full((1,), IGNORE), targets])[None]
        return loss(input_ids=labels.clamp(min=0), labels=labels)

    return run


def cmd_loss(args: argparse.Namespace) -> None:
    """Head + cross-entropy forward and backward on T positions: time, memory, and error against
    an fp32 reference, with the head frozen (LoRA) and trained (full fine-tuning)."""
    record: dict[str, Any] = {"impl": args.impl, "tokens": args.tokens, "hidden": args.hidden, "vocab": args.vocab}
    try:
        import torch
        import torch.nn.functional as F
        import torch.utils.checkpoint

        record["device"] = device_facts()
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if args.impl == "tuner":
            fn = tuner_head_loss()
        elif args.impl == "liger":
            from liger_kernel.transformers.fused_linear_cross_entropy import (
                LigerFusedLinearCrossEntropyLoss,
            )

            liger = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE, reduction="sum")
            fn = lambda h, w, t: liger(w, h, t)
        elif args.impl == "cce":
            from cut_cross_entropy import linear_cross_entropy

            fn = lambda h, w, t: linear_cross_entropy(h, w, t, ignore_index=IGNORE, reduction="sum")
        else:
            raise SystemExit(f"unknown --impl {args.impl}")
        gen = torch.Generator(device=device).manual_seed(0)
        T, H, V = args.tokens, args.hidden, args.vocab
        hidden = torch.randn(T, H, device=device, generator=gen).bfloat16()
        weight = (0.02 * torch.randn(V, H, device=device, generator=gen)).bfloat16()
        targets = torch.randint(0, V, (T,), device=device, generator=gen)
        targets[torch.rand(T, device=device, generator=gen) < 0.1] = IGNORE

        def reference(train_head: bool):
            h = hidden.float().requires_grad_()
            w = weight.float().requires_grad_(train_head)
            total = h.new_zeros(())
            for s in range(0, T, 1024):
                chunk = lambda a, b, c: F.cross_entropy(a @ b.T, c, ignore_index=IGNORE, reduction="sum")
                total = total + torch.utils.checkpoint.checkpoint(chunk, h[s:s + 1024], w, targets[s:s + 1024],
                                                                  use_reentrant=False)
            total.backward()
            return float(total), h.grad, (w.grad if train_head else None)

        record["results"] = {}
        for train_head in (False, True):
            name = "trained_head" if train_head else "frozen_head"
            ref_loss, ref_gh, ref_gw = reference(train_head)
            h = hidden.clone().requires_grad_()
            w = torch.nn.Parameter(weight.clone(), requires_grad=train_head)

            def step(h=h, w=w):
                h.grad = None
                w.grad = None
                loss = fn(h, w, targets)
                loss.backward()
                return loss

            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            loss = float(step())
            peak = (torch.cuda.max_memory_allocated() - base) if device == "cuda" else None
            gh, gw = h.grad.float(), (w.grad.float() if train_head else None)
            times = cuda_time_ms(step, warmup=args.warmup, reps=args.reps)
            rel = lambda a, b: float((a - b).norm() / b.norm())
            record["results"][name] = {
                "median_ms": statistics.median(times), "times_ms": times, "peak_bytes_above_inputs": peak,
                "loss": loss, "loss_rel_err": abs(loss - ref_loss) / abs(ref_loss),
                "grad_hidden_rel_err": rel(gh, ref_gh), "grad_weight_rel_err": rel(gw, ref_gw) if train_head else None,
            }
    except Exception:  # noqa: BLE001
        record["error"] = traceback.format_exc()
    write(args.out, record)


# --------------------------------------------------------------------------- TRL


def cmd_trl(args: argparse.Namespace) -> None:
    """TRL's SFTTrainer on the same rows and model: LoRA on every linear layer, packed rows
    (BFD, padding-free), bf16, sdpa, no gradient checkpointing, fused AdamW."""
    record: dict[str, Any] = {}
    try:
        import torch
        import trl
        from datasets import Dataset
        from peft import LoraConfig
        from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
        from trl import SFTConfig, SFTTrainer

        record.update(device=device_facts(), trl=trl.__version__)
        cuda = torch.cuda.is_available()
        rows = [json.loads(line) for line in Path(args.data).read_text().splitlines() if line.strip()]
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16, attn_implementation="sdpa")
        model.config.use_cache = False
        config = SFTConfig(
            output_dir=str(Path(args.workdir) / "trl-out"), max_steps=args.steps,
            per_device_train_batch_size=args.batch, gradient_accumulation_steps=1, learning_rate=args.lr,
            lr_scheduler_type="cosine", warmup_steps=2, weight_decay=0.0, max_grad_norm=1.0,
            optim="adamw_torch_fused", bf16=True, use_cpu=not cuda, gradient_checkpointing=False,
            logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, seed=42,
            dataloader_num_workers=0, max_length=args.seq, packing=True, packing_strategy="bfd",
            dataset_text_field="text",
        )
        peft_config = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=0.0,
                                 target_modules="all-linear", bias="none", task_type="CAUSAL_LM")
        step_ends: list[float] = []

        class Timer(TrainerCallback):
            def on_train_begin(self, *a, **kw):
                step_ends.append(time.perf_counter())

            def on_step_end(self, *a, **kw):
                if cuda:
                    torch.cuda.synchronize()
                step_ends.append(time.perf_counter())

        trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows),
                             processing_class=tokenizer, peft_config=peft_config, callbacks=[Timer()])
        collator = trainer.data_collator
        tokens: list[int] = []
        trained: list[int] = []

        def counting(examples):
            batch = collator(examples)
            mask = batch.get("attention_mask")
            tokens.append(int(mask.sum()) if mask is not None else int(batch["input_ids"].numel()))
            trained.append(int((batch["labels"][:, 1:] != IGNORE).sum()))
            return batch

        trainer.data_collator = counting
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
        durations = [b - a for a, b in zip(step_ends, step_ends[1:])]
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        record.update(
            steps=[{"step": i + 1, "seconds": d, "tokens": tokens[i] if i < len(tokens) else None,
                    "trained": trained[i] if i < len(trained) else None, "loss": losses[i] if i < len(losses) else None}
                   for i, d in enumerate(durations)],
            trainable=sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
            mixed_precision=str(trainer.accelerator.mixed_precision),
            max_memory_allocated=torch.cuda.max_memory_allocated() if cuda else None,
            max_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        )
    except Exception:  # noqa: BLE001
        record["error"] = traceback.format_exc()
    write(args.out, record)


# --------------------------------------------------------------------------- compare


def cmd_compare(args: argparse.Namespace) -> None:
    """Two safetensors files: same tensor names, bitwise equal or by how much they differ."""
    record: dict[str, Any] = {}
    try:
        from safetensors.torch import load_file

        a, b = load_file(args.a), load_file(args.b)
        record["same_names"] = sorted(a) == sorted(b)
        common = sorted(set(a) & set(b))
        record["tensors"] = len(common)
        record["bitwise_equal"] = record["same_names"] and all(a[k].equal(b[k]) for k in common)
        record["max_abs_diff"] = max((float((a[k].float() - b[k].float()).abs().max()) for k in common), default=None)
        record["max_abs_value"] = max((float(a[k].float().abs().max()) for k in common), default=None)
    except Exception:  # noqa: BLE001
        record["error"] = traceback.format_exc()
    write(args.out, record)


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("setup")
    p.add_argument("--spec", required=True)
    p.add_argument("--out", required=True)
    p = sub.add_parser("case")
    p.add_argument("--out", required=True)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p = sub.add_parser("attention")
    p.add_argument("--out", required=True)
    p.add_argument("--backends", required=True)
    p.add_argument("--shape", required=True, help="LlamaConfig keyword arguments as JSON")
    p.add_argument("--lengths", default="37,101,64,250")
    p = sub.add_parser("loss")
    p.add_argument("--impl", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--vocab", type=int, default=128256)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p = sub.add_parser("trl")
    for name in ("--model", "--data", "--out", "--workdir"):
        p.add_argument(name, required=True)
    for name in ("--seq", "--batch", "--steps"):
        p.add_argument(name, type=int, required=True)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-alpha", type=float, default=32)
    p = sub.add_parser("compare")
    for name in ("--a", "--b", "--out"):
        p.add_argument(name, required=True)
    args = ap.parse_args()
    if getattr(args, "rest", None) and args.rest[0] == "--":
        args.rest = args.rest[1:]
    {"setup": cmd_setup, "case": cmd_case, "attention": cmd_attention, "loss": cmd_loss,
     "trl": cmd_trl, "compare": cmd_compare}[args.command](args)


if __name__ == "__main__":
    main()
