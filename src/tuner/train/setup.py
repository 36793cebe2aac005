"""Everything a run needs before its first step, built once and in this order:
processes -> output folder -> inputs and data -> model -> batches and plan -> optimizer and
resume -> the wrapped module. The loop (tuner.train.loop) receives the result as a `Run`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tuner.config.schema import TunerConfig
from tuner.data.pipeline import PreparedData, prepare
from tuner.data.stream import StreamData, stream_data
from tuner.errors import UserError
from tuner.models.adapter import apply_adapter
from tuner.models.inputs import Inputs, load_inputs
from tuner.models.heads import Head, checkpoint_labels, parts
from tuner.models.load import bnb_config, decoder_layers, load_model, model_config, stored_dtype
from tuner.train import malloc
from tuner.train.checkpoint import (
    TrainerState,
    load_checkpoint,
    prepare_output_dir,
    restore_objective_state,
    restore_stream_position,
)
from tuner.train.distributed import accelerator_kwargs, check_world_size
from tuner.train.loss import selective_recompute, uses_selective_recompute
from tuner.train.objectives import Objective, objective_for
from tuner.train.objectives.base import Rollouts, Units
from tuner.train.objectives.preference import precompute_reference
from tuner.train.optim import build_optimizer, build_scheduler
from tuner.train.precision import apply_tf32, compute_dtype, mixed_precision
from tuner.train.step import Totals, accumulate_gradients
from tuner.train.step_plan import Cadence, StepPlan

log = logging.getLogger("tuner")


@dataclass
class Hooks:
    """Points where tools and tests watch a run (the memory-plan measurement, the profiler) or,
    for a control experiment, replace the gradient accumulation of a step. tuner uses none."""

    model_loading: Callable[[], None] = lambda: None
    model_loaded: Callable[[Any], None] = lambda model: None
    accumulate: Callable[..., Totals] = accumulate_gradients  # (module, batches, accelerator, objective)
    save: bool = True  # False: stop after the last step and save nothing


@dataclass
class Run:
    """One training run's parts, as the loop uses them."""

    cfg: TunerConfig
    accelerator: Any
    out_dir: Path
    inputs: Inputs
    data: PreparedData
    objective: Objective
    model: Any  # the unwrapped model (a PeftModel with an adapter)
    module: Any  # the objective's module around the model, prepared by accelerate
    train_batches: Units
    eval_batches: Units | None
    plan: StepPlan
    cadence: Cadence
    optimizer: Any
    scheduler: Any
    state: TrainerState
    save_dtype: Any  # the dtype a full fine-tune is saved in (the base's)
    hooks: Hooks = field(default_factory=Hooks)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process


def setup(cfg: TunerConfig, hooks: Hooks) -> Run:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    t = cfg.training
    accelerator = Accelerator(**accelerator_kwargs(t, mixed_precision(t)))
    malloc_mode = malloc.start()
    check_world_size(accelerator)
    set_seed(t.seed)
    if (note := apply_tf32(t)) and accelerator.is_main_process:
        log.info(note)
    out_dir = Path(t.output_dir)
    resume_from = prepare_output_dir(out_dir, t)

    inputs = load_inputs(cfg)
    data = prepare_data(cfg, inputs, accelerator)
    objective = objective_for(cfg, data.train, checkpoint_labels(model_config(cfg.model, inputs.base)))
    hooks.model_loading()
    model = build_model(cfg, inputs, accelerator.mixed_precision, objective.head)
    hooks.model_loaded(model)

    pad = inputs.tokenizer.pad_token_id
    if cfg.preference.precompute_ref_log_probs:  # the reference's log-probs once, then no reference
        data.train = precompute_reference(cfg, model, data.train, pad, accelerator)
        if data.eval is not None:
            data.eval = precompute_reference(cfg, model, data.eval, pad, accelerator)
    train_batches = objective.batches(data.train, cfg, pad, evaluation=False)
    eval_batches = None if data.eval is None else objective.batches(data.eval, cfg, pad, evaluation=True)
    plan_t, repeats = t, 1
    if isinstance(objective, Rollouts):  # GRPO: units are prompts; each rollout trains num_iterations steps
        plan_t, repeats = objective.plan_training(t, inputs.tokenizer), objective.updates_per_rollout
    plan = StepPlan.build(train_batches.units, plan_t, accelerator.num_processes, cfg.data.shuffle_merged_datasets,
                          repeats)
    optimizer = build_optimizer(model.parameters(), t)
    scheduler = build_scheduler(optimizer, t, plan.total_steps)
    state = TrainerState.new(data.fingerprint, plan)
    if resume_from is not None:
        state.continue_from(load_checkpoint(resume_from, model, optimizer, scheduler, accelerator.process_index),
                            resume_from)
        restore_stream_position(train_batches, resume_from, accelerator.process_index, state.step * t.micro_batch_size
                                * t.gradient_accumulation_steps)
        restore_objective_state(objective, resume_from, accelerator.process_index, state.step)
        if accelerator.is_main_process:
            log.info("resuming from %s at step %d of %d", resume_from, state.step, plan.total_steps)

    module = objective.wrap(model)
    if accelerator.device.type == "cpu":
        malloc.watch(module, malloc_mode)
    if t.torch_compile:
        compiled = compile_decoder_layers(model)
        if accelerator.is_main_process:
            log.info("torch_compile: %d decoder layers compiled in place (they share their graphs; compiled in the "
                     "first steps)", compiled)
    module, optimizer = accelerator.prepare(module, optimizer)
    run = Run(cfg, accelerator, out_dir, inputs, data, objective, model, module, train_batches, eval_batches, plan,
              Cadence.build(t, plan), optimizer, scheduler, state, stored_dtype(inputs.base), hooks)
    if run.main:
        log_plan(run)
    return run


def prepare_data(cfg: TunerConfig, inputs: Inputs, accelerator: Any) -> PreparedData | StreamData:
    """The prepared rows (labels built here, once). The main process prepares; the others then
    read the cache. A `pretraining_dataset` is streamed instead: each process opens its own part."""
    if cfg.data.pretraining_dataset:
        stream = stream_data(cfg, inputs.tokenizer, inputs.tokenizer_files, accelerator.process_index,
                             accelerator.num_processes)
        if accelerator.is_main_process:
            log.info(stream.summary())
        return stream
    with accelerator.main_process_first():
        data = prepare(cfg, inputs.tokenizer, inputs.tokenizer_files)
    if data.chat_template is not None:
        inputs.tokenizer.chat_template = data.chat_template  # saved with the model: the template that trained it
    if accelerator.is_main_process:
        log.info(data.summary())
    return data


def build_model(cfg: TunerConfig, inputs: Inputs, precision: str, head: Head | None = None) -> Any:
    """Base weights (quantized for QLoRA / 8-bit), gradient checkpointing, then the adapter.

    With an adapter the frozen base weights are held in the compute dtype (bf16 under bf16);
    the adapter's weights and the optimizer stay fp32. A full fine-tune keeps fp32 weights
    under autocast.
    """
    t, a = cfg.training, cfg.adapter
    if cfg.model.attn_implementation == "flex_attention" and not torch.cuda.is_available():
        raise UserError("attn_implementation: flex_attention trains on CUDA GPUs only (torch has no backward for "
                        "flex attention on CPU); use sdpa here (it also keeps packed documents apart).")
    dtype = compute_dtype(precision)
    model = load_model(cfg.model, inputs.base, inputs.tokenizer, dtype=dtype if a.adapter else torch.float32,
                       quantization=bnb_config(a, dtype), objective=cfg.objective, head=head)
    model.config.use_cache = False
    if head is not None:
        head_parameters = parts(model)[1].to(torch.float32)  # the head trains (in full): fp32 like an adapter
        log.info("head: %s with %d output(s) (%s), %s parameters; %s", type(model).__name__, head.num_labels,
                 head.problem_type, f"{sum(p.numel() for p in head_parameters.parameters()):,}",
                 "trained in full and saved with the adapter (peft modules_to_save: score)" if a.adapter
                 else "trained with the model")
    kwargs = {"use_reentrant": bool(t.gradient_checkpointing_kwargs and t.gradient_checkpointing_kwargs.use_reentrant)}
    if t.gradient_checkpointing:
        enable_checkpointing(model, kwargs)
    model = apply_adapter(model, a, t.gradient_checkpointing, kwargs)
    if uses_selective_recompute(cfg):
        selective_recompute(model)
    return model


def enable_checkpointing(model: Any, kwargs: dict[str, Any]) -> None:
    """Recompute decoder-layer activations in backward (`gradient_checkpointing_kwargs`; tuner's
    default is non-reentrant checkpointing, under which frozen inputs work)."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


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


def log_plan(run: Run) -> None:
    t, d, plan = run.cfg.training, run.cfg.data, run.plan
    trainable = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in run.model.parameters())
    if d.sample_packing:
        log.info("sample packing: %d rows in %d bins of %d tokens, packing efficiency %.1f%%",
                 run.data.train.num_rows, run.train_batches.units, d.sequence_len, 100 * run.train_batches.efficiency)
    log.info(
        "training %d rows for %d steps (%d per epoch): micro-batch %d x accumulation %d x %d process(es), "
        "precision %s, %s of %s parameters trainable",
        run.data.train.num_rows, plan.total_steps, plan.steps_per_epoch, t.micro_batch_size,
        t.gradient_accumulation_steps, run.accelerator.num_processes, run.accelerator.mixed_precision,
        f"{trainable:,}", f"{total:,}",
    )
