"""The training loop, top to bottom: setup -> the steps -> the save.

`train` runs any objective (tuner.train.objectives): what differs between supervised
fine-tuning, preference training and the rest is in the objective; the step, accumulation
(tuner.train.step), clipping, NaN policy, signals, checkpoints, evaluation, logging and the
final save are here, once.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.config.schema import TunerConfig
from tuner.errors import UserError
from tuner.train.checkpoint import checkpoint_dirs, objective_state, save_checkpoint, save_final, stream_position
from tuner.train.log import LogWindow, RunLog
from tuner.train.objectives.base import Rollouts
from tuner.train.report import describe, write_report
from tuner.train.setup import Hooks, Run, setup
from tuner.train.signals import Interrupted, StopSignal
from tuner.train.step import Totals, evaluate, reduce_sum

log = logging.getLogger("tuner")


@dataclass
class TrainResult:
    output_dir: Path
    model: Any  # the trained model (unwrapped; a PeftModel with an adapter)
    steps: int
    trained_tokens: int
    final_loss: float
    losses: list[float]


def train(cfg: TunerConfig, hooks: Hooks | None = None) -> TrainResult:
    run = setup(cfg, hooks or Hooks())
    out = RunLog.open(cfg, run.out_dir, run.plan.total_steps, run.state.step, enabled=run.main)
    try:
        losses = fit(run, out)
        return finish(run, out, losses)
    finally:
        out.close()


def fit(run: Run, out: RunLog) -> list[float]:
    """The optimizer steps from the resumed one (or the first) to the last, then the final
    evaluation. A stop signal ends the run after the current step, with a checkpoint."""
    t, plan, state, acc = run.cfg.training, run.plan, run.state, run.accelerator
    losses: list[float] = []
    window = LogWindow()
    run.module.train()
    with StopSignal() as stop:
        for step, _epoch, units in plan.steps(acc.process_index, start_step=state.step):
            started = time.perf_counter()
            totals, lr, grad_norm = train_step(run, units, step)
            state.step = done = step + 1
            losses.append(totals.loss)
            if isinstance(run.objective, Rollouts):  # GRPO: the tokens its training forward ran (all processes)
                tokens = totals.counts["sequence_tokens"]
            else:
                tokens = reduce_sum(acc, sum(run.train_batches.tokens(u) for u in units))
            window.add(totals.sums, totals.counts, totals.loss, tokens, time.perf_counter() - started)
            if done % t.logging_steps == 0 or done == plan.total_steps:
                log_window(run, out, window, lr, grad_norm)
                window = LogWindow()
            out.progress.update(1)

            if run.eval_batches is not None and run.cadence.eval_due(done):
                run_eval(run, out, done)
                if patience_ran_out(run, out):
                    return losses  # early stopping: a normal end (finish saves this step's model)
            stopping = stop_requested(acc, stop.signum)
            if done < plan.total_steps and (stopping or run.cadence.save_due(done)):
                saved = checkpoint(run, out)
                if stopping:
                    raise stopped(run, out, saved, stop.signum or signal.SIGTERM)
        if run.eval_batches is not None:
            run_eval(run, out, plan.total_steps)
    return losses


def train_step(run: Run, units: list[list[int]], step: int) -> tuple[Totals, float, float | None]:
    """One optimizer step: gradients of its micro-batches, clipping, the update (unless the
    loss is not finite: `nan_policy`), the schedule. (totals, learning rate, grad norm)."""
    t, acc, state = run.cfg.training, run.accelerator, run.state
    batches = [run.train_batches.batch(u) for u in units]
    if isinstance(run.objective, Rollouts):  # online RL: the step's prompts become its sampled micro-batches
        batches = run.objective.rollout(run.module, batches, acc, step)
    totals = run.hooks.accumulate(run.module, batches, acc, run.objective)
    grad_norm = float(acc.clip_grad_norm_(run.module.parameters(), t.max_grad_norm)) if t.max_grad_norm else None
    lr = run.scheduler.get_last_lr()[0]
    finite_grads = grad_norm is None or math.isfinite(grad_norm)
    if math.isfinite(totals.loss) and (finite_grads or acc.mixed_precision == "fp16"):
        # under fp16, gradients that overflowed are the grad scaler's: it skips the update and lowers the scale
        run.optimizer.step()
        if not finite_grads:
            log.info("step %d: fp16 gradients overflowed; the grad scaler skipped the update and lowered its scale",
                     step + 1)
    elif t.nan_policy == "stop":
        good = checkpoint_dirs(run.out_dir)
        raise UserError(
            f"the loss became {totals.loss} (grad norm {grad_norm}) at step {step + 1}; stopped "
            f"(nan_policy: stop). Last good checkpoint: {good[-1] if good else 'none saved yet'}. "
            "Lower learning_rate, check the data, or set nan_policy: skip to skip such steps."
        )
    else:
        state.skipped_steps += 1
        log.warning("step %d: non-finite loss %s, update skipped (%d so far)", step + 1, totals.loss,
                    state.skipped_steps)
    if math.isfinite(totals.loss):
        state.trained_tokens += int(totals.counts[run.objective.count_names[0]])  # SFT: trained tokens
    run.scheduler.step()  # the schedule follows the steps, skipped or not
    run.optimizer.zero_grad(set_to_none=True)
    return totals, lr, grad_norm


def log_window(run: Run, out: RunLog, window: LogWindow, lr: float, grad_norm: float | None) -> None:
    state, name = run.state, run.objective.count_names[0]
    values = run.objective.report(window.sums, window.counts, evaluation=False) if window.counts else {"loss": math.nan}
    record = {
        "step": state.step,
        "epoch": round(state.step / run.plan.steps_per_epoch, 4),
        **values,
        "learning_rate": lr,
        "grad_norm": grad_norm,
        name: state.trained_tokens,
        **window.rates(name),
        "train_seconds": window.seconds,
        "skipped_steps": state.skipped_steps,
    }
    out.write(record)
    out.progress.note(loss=record["loss"], lr=lr, tok_s=record["tokens_per_second"])


def run_eval(run: Run, out: RunLog, step: int) -> None:
    started = time.perf_counter()
    totals = evaluate(run.module, run.eval_batches, run.cfg.training.micro_batch_size, run.accelerator, run.objective)
    values = {f"eval_{k}": v for k, v in run.objective.report(totals.sums, totals.counts, evaluation=True).items()}
    state, loss = run.state, values["eval_loss"]
    improved = state.best_eval_loss is None or loss < state.best_eval_loss  # as HF's EarlyStoppingCallback
    state.evals_without_improvement = 0 if improved else state.evals_without_improvement + 1
    state.best_eval_loss = loss if improved else state.best_eval_loss
    out.write({"step": step, **values, "eval_seconds": time.perf_counter() - started})
    out.progress.note(eval_loss=values["eval_loss"])


def patience_ran_out(run: Run, out: RunLog) -> bool:
    """`early_stopping_patience`: eval_loss has not beaten its best for that many evaluations in a row."""
    patience, state = run.cfg.training.early_stopping_patience, run.state
    if not patience or state.evals_without_improvement < patience:
        return False
    log.info("early stopping: eval_loss has not improved on its best (%.4f) for %d evaluations "
             "(early_stopping_patience: %d); ending after step %d of %d", state.best_eval_loss,
             state.evals_without_improvement, patience, state.step, run.plan.total_steps)
    out.write({"event": "early_stop", "step": state.step, "best_eval_loss": state.best_eval_loss,
               "evals_without_improvement": state.evals_without_improvement})
    return True


def checkpoint(run: Run, out: RunLog) -> Path:
    started = time.perf_counter()
    acc = run.accelerator
    saved = save_checkpoint(run.out_dir, acc.unwrap_model(run.module).model, run.optimizer, run.scheduler, run.state,
                            rank=acc.process_index, keep=run.cfg.training.save_total_limit,
                            barrier=acc.wait_for_everyone, data_state=stream_position(run.train_batches),
                            objective_state=objective_state(run.objective))
    out.write({"step": run.state.step, "event": "checkpoint", "checkpoint": str(saved),
               "save_seconds": time.perf_counter() - started})
    return saved


def stop_requested(accelerator: Any, signum: int | None) -> bool:
    """Whether any process received a stop signal (all processes must stop at the same step)."""
    if accelerator.num_processes == 1:
        return signum is not None
    return reduce_sum(accelerator, 1 if signum is not None else 0) > 0


def stopped(run: Run, out: RunLog, saved: Path, signum: int) -> Interrupted:
    """The exception a stop signal ends the run with, after its report is written."""
    done, total = run.state.step, run.plan.total_steps
    out.progress.close()
    out.write({"event": "stopped", "step": done, "checkpoint": str(saved)})
    out.close()
    if run.main:
        log.info("report: %s", describe(write_report(run.out_dir)))
    return Interrupted(
        f"stopped by {signal.Signals(signum).name} after step {done} of {total}; checkpoint saved to {saved}. "
        "Resume with:\n  tuner train <config> --resume_from_checkpoint auto",
        signum,
    )


def finish(run: Run, out: RunLog, losses: list[float]) -> TrainResult:
    """Save the model (or adapter), tokenizer, config and run record; write the report."""
    acc, cfg = run.accelerator, run.cfg
    out.progress.close()
    acc.wait_for_everyone()
    trained = acc.unwrap_model(run.module, keep_fp32_wrapper=False).model  # plain forward, no autocast
    result = TrainResult(run.out_dir, trained, run.state.step, run.state.trained_tokens,
                         losses[-1] if losses else math.nan, losses)
    if not run.hooks.save:
        return result
    if run.main:
        record = {
            "base_model": cfg.model.base_model,
            "base_model_path": str(run.inputs.base.path),
            "data_fingerprint": run.data.fingerprint,
            "steps": run.state.step,
            "world_size": acc.num_processes,
            run.objective.count_names[0]: run.state.trained_tokens,  # trained_tokens for SFT, pairs for DPO
            "final_loss": losses[-1] if losses else None,
            "best_eval_loss": run.state.best_eval_loss,
        }
        save_final(trained, run.inputs.tokenizer, cfg, run.out_dir, record, dtype=run.save_dtype)
        log.info("saved the trained %s to %s", "adapter" if cfg.adapter.adapter else "model", run.out_dir)
        out.write({"event": "end", "saved_to": str(run.out_dir)})
    out.close()
    if run.main:
        log.info("summary: %s (report: %s)", describe(write_report(run.out_dir)), run.out_dir / "report.png")
    acc.end_training()
    return result
