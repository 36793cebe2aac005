"""The training loop, top to bottom: setup -> model -> data -> plan -> steps -> save.

One optimizer step:
  1. take `gradient_accumulation_steps` micro-batches of this process's rows,
  2. count their trained tokens and sum that count over all processes,
  3. for each micro-batch, backward (summed token loss) * world_size / (step's trained tokens)
     (DDP averages gradients over processes, hence the world_size),
  4. clip, step the optimizer and the schedule, log.
So the loss of a step is the sum of its token losses divided by its trained tokens: every
trained token weighs the same, however the rows are spread over micro-batches.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tuner.config.schema import TrainingBlock, TunerConfig
from tuner.data.pack import Batches, shuffled_order
from tuner.data.pipeline import prepare
from tuner.errors import UserError
from tuner.models.adapter import apply_adapter, check_added_tokens
from tuner.models.load import (
    bnb_config,
    decoder_layers,
    load_model,
    load_tokenizer_and_new_ids,
    resolve_base,
    stored_dtype,
    tokenizer_files,
)
from tuner.train.checkpoint import (
    RUN_RECORD,
    TrainerState,
    checkpoint_dirs,
    clear_previous_run,
    find_resume_checkpoint,
    load_checkpoint,
    save_checkpoint,
    save_final,
)
from tuner.train.distributed import accelerator_kwargs, check_world_size
from tuner.train.log import MetricsLog, Progress, open_trackers
from tuner.train.report import describe, write_report
from tuner.train.loss import CausalLMLoss, trained_token_count
from tuner.train.optim import build_optimizer, build_scheduler

log = logging.getLogger("tuner")


# --------------------------------------------------------------------------- setup helpers


def compile_decoder_layers(model: torch.nn.Module) -> int:
    """torch_compile: compile each decoder layer in place ("regional" compilation).

    All layers run the same code, so torch.compile traces a layer once and every layer reuses
    the graph (parameters are graph inputs, not constants); compiling the whole model instead
    unrolls all layers into one graph and took over 7 minutes on a 2-core CPU. In-place
    `Module.compile` keeps module names, so checkpoints and adapters save unchanged. The
    embedding, the mask construction and tuner's gathered head stay eager.
    """
    layers = decoder_layers(model)
    if not layers:
        raise UserError(f"torch_compile: cannot find the decoder layers of {type(model).__name__}; "
                        "set `torch_compile: false`.")
    for layer in layers:
        layer.compile()
    return len(layers)


def cpu_has_fast_bf16() -> bool:
    """AMX or AVX512-BF16: where bf16 matrix multiplies are faster than fp32 on this CPU."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def mixed_precision(t: TrainingBlock) -> str:
    """accelerate's mixed_precision: 'bf16', 'fp16' or 'no'."""
    cuda = torch.cuda.is_available()
    if t.fp16 is True:
        if not cuda:
            raise UserError("fp16: true needs a CUDA GPU; on CPU use `bf16: true` (or `auto`).")
        return "fp16"
    if t.bf16 is True:
        if cuda and not torch.cuda.is_bf16_supported():
            raise UserError("bf16: true but this GPU does not support bf16; use `fp16: true` instead.")
        return "bf16"
    if t.bf16 == "auto":
        if (cuda and torch.cuda.is_bf16_supported()) or (not cuda and cpu_has_fast_bf16()):
            return "bf16"
    if t.fp16 == "auto" and cuda:
        return "fp16"
    return "no"


@dataclass(frozen=True)
class StepPlan:
    """Which rows each process uses in each optimizer step.

    Rows are shuffled once per epoch with `seed + epoch`. A *global* micro-batch is
    `micro_batch_size * world_size` consecutive rows of that order; process `rank` takes
    its slice. With several processes the order is padded by wrapping around, so every
    process runs the same number of micro-batches.
    """

    rows: int
    micro_batch_size: int
    accumulation: int
    world_size: int
    total_steps: int
    seed: int

    @property
    def micro_batches_per_epoch(self) -> int:
        return math.ceil(self.rows / (self.micro_batch_size * self.world_size))

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.micro_batches_per_epoch / self.accumulation)

    @classmethod
    def build(cls, rows: int, t: TrainingBlock, world_size: int) -> StepPlan:
        probe = cls(rows, t.micro_batch_size, t.gradient_accumulation_steps, world_size, 0, t.seed)
        total = t.max_steps if t.max_steps is not None else math.ceil((t.num_epochs or 1) * probe.steps_per_epoch)
        return cls(rows, t.micro_batch_size, t.gradient_accumulation_steps, world_size, max(1, total), t.seed)

    def epoch_order(self, epoch: int) -> list[int]:
        order = shuffled_order(self.rows, self.seed + epoch)
        per_global = self.micro_batch_size * self.world_size
        if self.world_size > 1 and len(order) % per_global:
            order += order[: per_global - len(order) % per_global]
        return order

    def steps(self, rank: int, start_step: int = 0) -> Iterator[tuple[int, int, list[list[int]]]]:
        """(step, epoch, [row indices of each micro-batch of this process]) from `start_step` on."""
        step = start_step
        epoch, skip = divmod(start_step, self.steps_per_epoch)
        while step < self.total_steps:
            order = self.epoch_order(epoch)
            per_global = self.micro_batch_size * self.world_size
            globals_ = [order[i : i + per_global] for i in range(0, len(order), per_global)]
            mine = [g[rank * self.micro_batch_size : (rank + 1) * self.micro_batch_size] for g in globals_]
            groups = [mine[i : i + self.accumulation] for i in range(0, len(mine), self.accumulation)]
            for group in groups[skip:]:
                if step >= self.total_steps:
                    return
                yield step, epoch, group
                step += 1
            epoch, skip = epoch + 1, 0


@dataclass
class TrainResult:
    output_dir: Path
    model: Any  # the trained model (unwrapped; a PeftModel with an adapter)
    steps: int
    trained_tokens: int
    final_loss: float
    losses: list[float]


def _reduce_sum(accelerator: Any, value: float | int | torch.Tensor) -> float:
    tensor = torch.as_tensor(value, dtype=torch.float64, device=accelerator.device)
    if accelerator.num_processes > 1:
        tensor = accelerator.reduce(tensor, reduction="sum")
    return float(tensor)


def enable_checkpointing(model: Any) -> None:
    """Recompute decoder-layer activations in backward (non-reentrant, so frozen inputs work)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _count_params(model: torch.nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def accumulate_gradients(model: Any, batches: list[dict[str, torch.Tensor]], accelerator: Any) -> tuple[float, float]:
    """Backward over the micro-batches of one optimizer step; (loss sum, trained tokens) of the step.

    `model` is a `CausalLMLoss` (the model with tuner's loss), possibly wrapped by accelerate.

    Each micro-batch's summed token loss is divided by the trained tokens of the whole step
    on all processes (times world_size, since DDP averages gradients), so the gradient is
    that of (sum of token losses) / (trained tokens in the step).
    """
    step_trained = _reduce_sum(accelerator, sum(trained_token_count(b["labels"]) for b in batches))
    scale = accelerator.num_processes / step_trained
    loss_sum = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    for k, batch in enumerate(batches):
        batch = {key: value.to(accelerator.device) for key, value in batch.items()}
        last = k == len(batches) - 1
        with nullcontext() if last else accelerator.no_sync(model), accelerator.autocast():
            summed = model(**batch)  # a CausalLMLoss: the summed loss of the batch's trained tokens
        accelerator.backward(summed * scale)
        loss_sum += summed.detach().double()
    return _reduce_sum(accelerator, loss_sum), step_trained


def every(value: int | float | None, total_steps: int) -> int | None:
    """`save_steps` / `eval_steps`: a step count, or a fraction of all steps."""
    if value is None:
        return None
    return max(1, round(value * total_steps)) if isinstance(value, float) else int(value)


def evaluate(model: Any, batches: Batches, micro_batch_size: int, accelerator: Any) -> tuple[float, int]:
    """(mean loss over the trained tokens of the evaluation rows, trained tokens).

    `model` is a `CausalLMLoss`; units (rows or packed bins) are split over processes.
    """
    model.eval()
    loss_sum, tokens = 0.0, 0
    mine = list(range(accelerator.process_index, batches.units, accelerator.num_processes))
    with torch.no_grad():
        for i in range(0, len(mine), micro_batch_size):
            batch = batches.batch(mine[i : i + micro_batch_size])
            tokens += trained_token_count(batch["labels"])
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            with accelerator.autocast():
                loss_sum += float(model(**batch))
    model.train()
    total = _reduce_sum(accelerator, tokens)
    return _reduce_sum(accelerator, loss_sum) / max(total, 1), int(total)


class Interrupted(UserError):
    """Training stopped on SIGTERM/SIGINT after saving a checkpoint."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class StopSignal:
    """The first SIGTERM/SIGINT asks to stop after the current step (with a checkpoint);
    a second one exits at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            print(f"\ntuner: second {signal.Signals(signum).name}: stopping now, without saving", file=sys.stderr)
            os._exit(128 + signum)
        self.signum = signum
        print(
            f"\ntuner: {signal.Signals(signum).name} received: finishing this step and saving a checkpoint "
            "(send it again to stop at once)",
            file=sys.stderr,
        )


def prepare_output_dir(out_dir: Path, t: TrainingBlock) -> Path | None:
    """Refuse to overwrite a run unless asked; return the checkpoint to resume from, if any."""
    resume = find_resume_checkpoint(t.resume_from_checkpoint, out_dir)
    if resume is not None:
        return resume
    finished = (out_dir / RUN_RECORD).is_file()
    unfinished = bool(checkpoint_dirs(out_dir))
    if (finished or unfinished) and not t.overwrite_output_dir:
        what = "a finished run" if finished else "checkpoints of an unfinished run"
        hint = "" if finished else " resume it with `--resume_from_checkpoint auto`, or"
        raise UserError(
            f"output_dir: {out_dir} already holds {what}. To keep it, choose another output_dir;"
            f"{hint} set `overwrite_output_dir: true` to replace it."
        )
    if t.overwrite_output_dir:
        clear_previous_run(out_dir)
    if t.resume_from_checkpoint == "auto":
        log.info("resume_from_checkpoint: auto found no complete checkpoint in %s; starting at step 0", out_dir)
    return None


def check_resumable(state: TrainerState, expected: TrainerState, path: Path) -> None:
    fields = ("data_fingerprint", "rows", "micro_batch_size", "gradient_accumulation_steps", "world_size", "seed")
    changed = [f"{f}: {getattr(state, f)} -> {getattr(expected, f)}" for f in fields if getattr(state, f) != getattr(expected, f)]
    if changed:
        raise UserError(
            f"resume_from_checkpoint: {path} was made with different settings, so the run cannot continue "
            f"exactly ({'; '.join(changed)}). Restore them, or start a new run."
        )


# --------------------------------------------------------------------------- the loop


def train(cfg: TunerConfig) -> TrainResult:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    t = cfg.training
    out_dir = Path(t.output_dir)

    # 1. Setup: processes (DDP / FSDP / DeepSpeed), precision, seed, output folder.
    accelerator = Accelerator(**accelerator_kwargs(t, mixed_precision(t)))
    check_world_size(accelerator)
    set_seed(t.seed)
    main = accelerator.is_main_process
    resume_from = prepare_output_dir(out_dir, t)

    # 2. Tokenizer and data (labels are built here, once, in the data stage).
    base = resolve_base(cfg.model)
    tokenizer, new_ids = load_tokenizer_and_new_ids(cfg.model, base)
    check_added_tokens(cfg.adapter, new_ids)
    with accelerator.main_process_first():  # the main process prepares; the others then read the cache
        data = prepare(cfg, tokenizer, tokenizer_files(cfg.model, base))
    if data.chat_template is not None:
        tokenizer.chat_template = data.chat_template  # saved with the model: the template that trained it
    if main:
        log.info(data.summary())

    # 3. Model: base weights (quantized for QLoRA / 8-bit), gradient checkpointing, then the
    #    adapter. With an adapter the frozen base weights are held in the compute dtype (bf16
    #    under bf16); the adapter's weights and the optimizer stay fp32. A full fine-tune
    #    keeps fp32 weights under autocast.
    precision = accelerator.mixed_precision
    compute_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    model = load_model(
        cfg.model, base, tokenizer,
        dtype=compute_dtype if cfg.adapter.adapter else torch.float32,
        quantization=bnb_config(cfg.adapter, compute_dtype),
    )
    save_dtype = stored_dtype(base)  # a full fine-tune is saved in the dtype the base stores
    model.config.use_cache = False
    if t.gradient_checkpointing:
        enable_checkpointing(model)
    model = apply_adapter(model, cfg.adapter, t.gradient_checkpointing)
    trainable, total = _count_params(model)

    # 4. Batches (packed or padded), plan, optimizer, schedule; then the checkpoint to resume from.
    d = cfg.data
    train_batches = Batches(data.train, tokenizer.pad_token_id, d.sequence_len, d.sample_packing,
                            d.pad_to_multiple_of, d.pad_to_sequence_len, d.batch_flattening)
    eval_batches = None
    if data.eval is not None:
        eval_packing = d.sample_packing if d.eval_sample_packing is None else d.eval_sample_packing
        eval_batches = Batches(data.eval, tokenizer.pad_token_id, d.sequence_len, eval_packing,
                               d.pad_to_multiple_of, d.pad_to_sequence_len, d.batch_flattening and not eval_packing)
    plan = StepPlan.build(train_batches.units, t, accelerator.num_processes)
    optimizer = build_optimizer(model.parameters(), t)
    scheduler = build_scheduler(optimizer, t, plan.total_steps)
    state = TrainerState(
        step=0, trained_tokens=0, data_fingerprint=data.fingerprint, rows=plan.rows,
        micro_batch_size=plan.micro_batch_size, gradient_accumulation_steps=plan.accumulation,
        world_size=plan.world_size, seed=plan.seed, total_steps=plan.total_steps,
    )
    if resume_from is not None:
        resumed = load_checkpoint(resume_from, model, optimizer, scheduler, accelerator.process_index)
        check_resumable(resumed, state, resume_from)
        for name in ("step", "trained_tokens", "best_eval_loss", "skipped_steps"):
            setattr(state, name, getattr(resumed, name))
        if main:
            log.info("resuming from %s at step %d of %d", resume_from, state.step, plan.total_steps)
    loss_model = CausalLMLoss(model)  # the model and tuner's loss, wrapped by accelerate as one
    if t.torch_compile:
        compiled = compile_decoder_layers(model)
        if main:
            log.info("torch_compile: %d decoder layers compiled in place (they share their graphs; compiled in the first steps)",
                     compiled)
    loss_model, optimizer = accelerator.prepare(loss_model, optimizer)
    save_every, eval_every = every(t.save_steps, plan.total_steps), every(t.eval_steps, plan.total_steps)
    if main:
        if d.sample_packing:
            log.info("sample packing: %d rows in %d bins of %d tokens, packing efficiency %.1f%%",
                     data.train.num_rows, train_batches.units, d.sequence_len, 100 * train_batches.efficiency)
        log.info(
            "training %d rows for %d steps (%d per epoch): micro-batch %d x accumulation %d x %d process(es), "
            "precision %s, %s of %s parameters trainable",
            data.train.num_rows, plan.total_steps, plan.steps_per_epoch, t.micro_batch_size,
            t.gradient_accumulation_steps, accelerator.num_processes, precision,
            f"{trainable:,}", f"{total:,}",
        )

    # 5. Steps.
    out_dir.mkdir(parents=True, exist_ok=True)
    trackers = open_trackers(t, out_dir, cfg.to_flat()) if main else []
    metrics = MetricsLog(out_dir / "metrics.jsonl", enabled=main, keep_until_step=state.step, trackers=trackers)
    metrics.write({"event": "start", "total_steps": plan.total_steps, "from_step": state.step})
    progress = Progress(plan.total_steps, initial=state.step, enabled=main)
    losses: list[float] = []
    window = {"loss_sum": 0.0, "trained": 0, "tokens": 0, "start": time.perf_counter()}

    def checkpoint() -> Path:
        return save_checkpoint(
            out_dir, accelerator.unwrap_model(loss_model).model, optimizer, scheduler, state,
            rank=accelerator.process_index, keep=t.save_total_limit, barrier=accelerator.wait_for_everyone,
        )

    def run_eval(step: int) -> None:
        eval_loss, eval_tokens = evaluate(loss_model, eval_batches, t.micro_batch_size, accelerator)
        state.best_eval_loss = min(eval_loss, state.best_eval_loss or math.inf)
        metrics.write({"step": step, "eval_loss": eval_loss, "eval_perplexity": math.exp(min(eval_loss, 50)),
                       "eval_tokens": eval_tokens})
        progress.note(eval_loss=eval_loss)

    loss_model.train()
    with StopSignal() as stop:
        for step, epoch, micro_batches in plan.steps(accelerator.process_index, start_step=state.step):
            batches = [train_batches.batch(units) for units in micro_batches]
            step_loss_sum, step_trained = accumulate_gradients(loss_model, batches, accelerator)

            step_loss = step_loss_sum / step_trained
            grad_norm = None
            if t.max_grad_norm:
                grad_norm = float(accelerator.clip_grad_norm_(loss_model.parameters(), t.max_grad_norm))
            lr = scheduler.get_last_lr()[0]
            if math.isfinite(step_loss) and (grad_norm is None or math.isfinite(grad_norm)):
                optimizer.step()
            elif t.nan_policy == "stop":
                progress.close()
                metrics.close()
                good = checkpoint_dirs(out_dir)
                raise UserError(
                    f"the loss became {step_loss} (grad norm {grad_norm}) at step {step + 1}; stopped "
                    f"(nan_policy: stop). Last good checkpoint: {good[-1] if good else 'none saved yet'}. "
                    "Lower learning_rate, check the data, or set nan_policy: skip to skip such steps."
                )
            else:
                state.skipped_steps += 1
                log.warning("step %d: non-finite loss %s, update skipped (%d so far)", step + 1, step_loss, state.skipped_steps)
            scheduler.step()  # the schedule follows the steps, skipped or not
            optimizer.zero_grad(set_to_none=True)
            losses.append(step_loss)
            state.step = done = step + 1
            if math.isfinite(step_loss):
                state.trained_tokens += int(step_trained)
                window["loss_sum"] += step_loss * step_trained
                window["trained"] += step_trained
            window["tokens"] += _reduce_sum(accelerator, sum(train_batches.tokens(units) for units in micro_batches))
            if done % t.logging_steps == 0 or done == plan.total_steps:
                elapsed = time.perf_counter() - window["start"]
                record = {
                    "step": done,
                    "epoch": round(done / plan.steps_per_epoch, 4),
                    "loss": window["loss_sum"] / window["trained"] if window["trained"] else math.nan,
                    "learning_rate": lr,
                    "grad_norm": grad_norm,
                    "trained_tokens": state.trained_tokens,
                    "tokens_per_second": window["tokens"] / elapsed,
                    "trained_tokens_per_second": window["trained"] / elapsed,
                    "skipped_steps": state.skipped_steps,
                }
                metrics.write(record)
                progress.note(loss=record["loss"], lr=lr, tok_s=record["tokens_per_second"])
                window = {"loss_sum": 0.0, "trained": 0, "tokens": 0, "start": time.perf_counter()}
            progress.update(1)

            epoch_end = done % plan.steps_per_epoch == 0
            last = done == plan.total_steps
            if data.eval is not None and not last and (done % eval_every == 0 if eval_every else epoch_end):
                run_eval(done)
            stopping = _stop_requested(accelerator, stop.signum)
            if not last and (stopping or (done % save_every == 0 if save_every else epoch_end)):
                saved = checkpoint()
                if stopping:
                    progress.close()
                    metrics.write({"event": "stopped", "step": done, "checkpoint": str(saved)})
                    metrics.close()
                    if main:
                        log.info("report: %s", describe(write_report(out_dir)))
                    signum = stop.signum or signal.SIGTERM
                    raise Interrupted(
                        f"stopped by {signal.Signals(signum).name} after step {done} of {plan.total_steps}; "
                        f"checkpoint saved to {saved}. Resume with:\n"
                        f"  tuner train <config> --resume_from_checkpoint auto",
                        signum,
                    )
        if data.eval is not None:
            run_eval(plan.total_steps)
    progress.close()

    # 6. Save the model (or adapter), tokenizer, config and run record.
    accelerator.wait_for_everyone()
    trained = accelerator.unwrap_model(loss_model, keep_fp32_wrapper=False).model  # plain forward, no autocast
    if main:
        record = {
            "base_model": cfg.model.base_model,
            "base_model_path": str(base.path),
            "data_fingerprint": data.fingerprint,
            "steps": plan.total_steps,
            "world_size": accelerator.num_processes,
            "trained_tokens": state.trained_tokens,
            "final_loss": losses[-1] if losses else None,
            "best_eval_loss": state.best_eval_loss,
        }
        save_final(trained, tokenizer, cfg, out_dir, record, dtype=save_dtype)
        log.info("saved the trained %s to %s", "adapter" if cfg.adapter.adapter else "model", out_dir)
        metrics.write({"event": "end", "saved_to": str(out_dir)})
    metrics.close()
    if main:
        log.info("summary: %s (report: %s)", describe(write_report(out_dir)), out_dir / "report.png")
    accelerator.end_training()
    return TrainResult(out_dir, trained, plan.total_steps, state.trained_tokens, losses[-1] if losses else math.nan, losses)


def _stop_requested(accelerator: Any, signum: int | None) -> bool:
    """Whether any process received a stop signal (all processes must stop at the same step)."""
    if accelerator.num_processes == 1:
        return signum is not None
    return _reduce_sum(accelerator, 1 if signum is not None else 0) > 0
