"""Axolotl and HF-Trainer keys that have no field of their own in tuner's schema.

An Axolotl config should run unchanged, and nothing a user set is ignored silently. Every
such top-level key is one of:

  * renamed: a legacy or foreign spelling of something tuner does (`flash_attention: true`,
    `torch_dtype`, top-level `fsdp_version`, `fsdp_config.fsdp_*`, `batch_size`, ...). It is
    rewritten to tuner's key, with a notice naming the key to write instead.
  * not applied (`NOT_APPLIED`): a key that only changes speed or memory through kernels
    tuner does not use (Liger, Cut Cross Entropy, fused LoRA kernels, hub kernels), or
    infrastructure tuner handles itself (dataloader workers, DDP knobs, the Hub). Accepted
    and reported once at start, with what tuner does instead.
  * not supported yet (`UNSUPPORTED`): a capability tuner lacks (multimodal, preference
    training, QAT, context parallelism, ...). Refused with the words "not supported yet" and
    the capability named, unless the value asks for nothing (empty, false, a size of 1).

Axolotl keys in none of these tables (see axolotl_keys.py) are refused as "not supported
yet" by load.py, and keys Axolotl does not have get a did-you-mean.

`translate` does all of this on the parsed YAML mapping before the schema sees it. It
imports nothing beyond the standard library: `tuner validate` must stay light, and the
packages an attention backend needs are looked up with importlib.util.find_spec (which
finds a package without importing it).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

KeyPath = tuple[Any, ...]


@dataclass(frozen=True)
class Remark:
    """A notice or a problem about one key, before load.py adds its line."""

    path: KeyPath
    kind: Literal["renamed", "not applied", "warning", "error"]
    message: str


def asks_nothing(value: Any, default: Any = None, off: tuple[Any, ...] = ()) -> bool:
    """Empty, false, Axolotl's own default, or a value listed as "off" for the key."""
    return value is None or value is False or value in ("", [], {}) or value == default or value in off


# --------------------------------------------------------------------------- not applied

_KERNELS = "tuner runs the model's own PyTorch modules; torch_compile fuses a layer's operations"
_CCE = ("tuner's own loss does this: the output head and cross-entropy run in recomputed chunks on "
        "trained positions only, so the full logits are never held")
_LORA_KERNELS = "Axolotl's fused LoRA Triton kernels (CUDA); tuner runs peft's LoRA layers"
_DDP = "tuner uses accelerate's DDP defaults"
_HUB = "tuner does not push to (or pull from) the Hugging Face Hub during a run; push the output_dir yourself"
_TOKEN = "huggingface_hub reads the token from HF_TOKEN or `hf auth login` by itself"
_ARCH = "tuner reads the architecture from the model's config.json"

NOT_APPLIED: dict[str, str] = {
    # Kernels and fusions for CUDA GPUs.
    "liger_rms_norm": _KERNELS, "liger_glu_activation": _KERNELS, "liger_layer_norm": _KERNELS,
    "liger_rope": _KERNELS, "liger_rms_norm_gated": _KERNELS, "liger_swiglu": _KERNELS,
    "liger_cross_entropy": _CCE, "liger_fused_linear_cross_entropy": _CCE, "cut_cross_entropy": _CCE,
    "chunked_cross_entropy": _CCE, "chunked_cross_entropy_num_chunks": _CCE, "flash_attn_cross_entropy": _CCE,
    "flash_attn_rms_norm": _KERNELS, "flash_attn_fuse_mlp": _KERNELS, "fused_attn_kernel": _KERNELS,
    "flash_optimum": _KERNELS, "use_kernels": _KERNELS, "use_scattermoe": _KERNELS, "use_sonicmoe": _KERNELS,
    "experts_implementation": _KERNELS, "use_dsv4_kernels": _KERNELS, "use_glm_dsa_kernels": _KERNELS,
    "dsv4_fp4_grouped_mode": _KERNELS, "gemma4_hybrid_attn_impl": "tuner runs every layer with the one "
    "attn_implementation", "flex_attn_compile_kwargs": "tuner compiles flex attention with transformers' settings",
    "sdpa_varlen": "tuner's packed rows isolate documents through position_ids with transformers' own masks",
    "large_head_attention": "tuner runs transformers' attention for every head size",
    "flash_attn_d512": "tuner runs transformers' attention for every head size",
    "lora_mlp_kernel": _LORA_KERNELS, "lora_qkv_kernel": _LORA_KERNELS, "lora_o_kernel": _LORA_KERNELS,
    "lora_embedding_kernel": _LORA_KERNELS,
    "torch_compile_backend": "torch_compile uses inductor", "torch_compile_mode": "torch_compile uses the default mode",
    "torch_compile_options": "torch_compile uses inductor's defaults",
    "tiled_mlp": "tuner runs the MLP untiled; use gradient_checkpointing to save activation memory",
    "tiled_mlp_num_shards": "tuner runs the MLP untiled", "tiled_mlp_use_original_mlp": "tuner runs the MLP untiled",
    "activation_offloading": "activations stay on the device; use gradient_checkpointing to save their memory",
    "quantize_moe_experts": "bitsandbytes quantizes the linear layers; MoE expert tensors stay in the load dtype",
    "gc_steps": "tuner leaves garbage collection to Python", "gc_collect_steps": "tuner leaves garbage collection to Python",
    "torch_empty_cache_steps": "tuner leaves the CUDA cache to PyTorch",
    "experimental_skip_move_to_device": "tuner places the model itself",
    "low_cpu_mem_usage": "transformers loads weights lazily already",
    "device_map": "tuner puts the model on the process's device (one process per device)",
    "max_memory": "tuner puts the model on the process's device (one process per device)",
    "resize_token_embeddings_to_32x": "the embedding matrix keeps its size (plus added tokens)",
    # Data loading and batching tuner does itself.
    "dataloader_num_workers": "batches are built in the training process from the prepared rows",
    "dataloader_pin_memory": "batches are built in the training process from the prepared rows",
    "dataloader_prefetch_factor": "batches are built in the training process from the prepared rows",
    "remove_unused_columns": "prepared rows hold only the columns tuner trains on",
    "group_by_length": "use sample_packing or batch_flattening, which remove padding instead",
    "skip_prepare_dataset": "tuner prepares (tokenizes) the data once and caches it",
    "eval_batch_size": "evaluation runs micro_batch_size rows at a time (the eval loss does not depend on it)",
    "include_tokens_per_second": "tuner always logs tokens/s",
    # Distributed-training knobs tuner leaves to accelerate.
    "ddp_find_unused_parameters": _DDP, "ddp_timeout": _DDP, "ddp_bucket_cap_mb": _DDP,
    "ddp_broadcast_buffers": _DDP, "ddp": "tuner uses DDP whenever it runs as several processes",
    # The Hub, tokens and telemetry.
    "hub_model_id": _HUB, "hub_strategy": _HUB, "hub_revision": _HUB, "push_dataset_to_hub": _HUB,
    "hf_use_auth_token": _TOKEN, "use_auth_token": _TOKEN,
    "use_otel_metrics": "tuner writes metrics.jsonl and its trackers", "otel_metrics_host": "no OpenTelemetry export",
    "otel_metrics_port": "no OpenTelemetry export",
    # Model-family hints tuner does not need.
    "is_llama_derived_model": _ARCH, "is_mistral_derived_model": _ARCH, "is_falcon_derived_model": _ARCH,
    "is_qwen_derived_model": _ARCH,
    "lora_fan_in_fan_out": "peft sets fan_in_fan_out from each layer's type (true for GPT-2's Conv1D only)",
    "strict": "tuner always checks every key",
    "save_safetensors": "tuner always saves safetensors",
    "save_only_model": "tuner's checkpoints keep the optimizer state so that a run can resume",
    "save_first_step": "tuner checkpoints on its save cadence",
    "loss_watchdog_threshold": "tuner stops on a non-finite loss (nan_policy), not on a loss threshold",
    "loss_watchdog_patience": "tuner stops on a non-finite loss (nan_policy), not on a loss threshold",
    "tokenizer_save_jinja_files": "the saved tokenizer keeps its chat template as transformers writes it",
    "use_wandb": "W&B logging is on exactly when wandb_project is set",
    "model_config": "tuner loads config.json as it is (no config overrides); MoE router losses are not added",
    "debug": "`tuner inspect CONFIG` shows prepared rows token by token",
    "accelerator_config": "tuner builds accelerate's Accelerator itself (gradients sync once per optimizer step)",
    # SwanLab (an Axolotl plugin) is not one of tuner's trackers.
    **{k: "SwanLab is not one of tuner's trackers (TensorBoard, W&B, MLflow)" for k in (
        "use_swanlab", "swanlab_project", "swanlab_experiment_name", "swanlab_description", "swanlab_mode",
        "swanlab_log_completions", "swanlab_completion_log_interval", "swanlab_completion_max_buffer",
        "swanlab_workspace", "swanlab_log_model")},
}

NOT_APPLIED.update({
    "dpo_padding_free": "tuner's preference batches are padding-free already (chosen and rejected end to end)",
    "dpo_use_logits_to_keep": "tuner's head runs only on the completion tokens already",
    "dpo_use_liger_kernel": _CCE,
})

# Values that are what tuner does anyway: accepted without a notice.
ALREADY: dict[str, tuple[Any, ...]] = {
    "save_safetensors": (True,), "include_tokens_per_second": (True,), "include_tkps": (True,),
    "tokenizer_save_jinja_files": (True,), "remove_unused_columns": (False,),
}

# --------------------------------------------------------------------------- not supported yet

MULTIMODAL = "multimodal training (images, audio, processors)"
RL_METHODS = ("dpo", "ipo", "simpo", "orpo", "kto", "grpo")
RL_CAPABILITIES = {"gdpo": "online RL (rl: gdpo)", "ebft": "Axolotl's EBFT trainer (rl: ebft)",
                   "dpo_norm": "length-normalised DPO (rl: dpo_norm; TRL: dpo_loss_type [sigmoid_norm])"}
UNSUPPORTED: dict[str, str] = {
    "processor_type": MULTIMODAL, "processor_kwargs": MULTIMODAL, "image_size": MULTIMODAL,
    "image_resize_algorithm": MULTIMODAL, "freeze_mm_modules": MULTIMODAL,
    "dpo_use_weighting": "weighted preference optimisation (WPO, dpo_use_weighting)",
    "dpo_norm_loss": "dpo_norm_loss (Axolotl no longer has it either)",
    "dpo_generate_during_eval": "generation samples during evaluation",
    "vllm": "online RL (GRPO generation with vLLM)",
    "process_reward_model": "process-reward-model training",
    "cls_model_config": "classification heads (num_labels)",
    "qat": "quantization-aware training (QAT)", "fp8": "FP8 training", "fp8_config": "FP8 training",
    "fp8_enable_fsdp_float8_all_gather": "FP8 training",
    "context_parallel_size": "context parallelism", "sequence_parallel_degree": "context parallelism",
    "heads_k_stride": "context parallelism", "ring_attn_func": "context parallelism",
    "tensor_parallel_size": "tensor parallelism",
    "dp_replicate_size": "N-D parallelism (dp_replicate_size)",
    "expert_parallel_size": "expert parallelism", "expert_parallel_num_nvl_bytes": "expert parallelism",
    "expert_parallel_token_capacity": "expert parallelism",
    "streaming": "streaming datasets", "pretrain_multipack_attn": "streaming pretraining datasets",
    "pretrain_multipack_buffer_size": "streaming pretraining datasets",
    "streaming_multipack_buffer_size": "streaming datasets",
    "diffusion": "diffusion language-model training", "ebft": "Axolotl's EBFT trainer",
    "relora": "ReLoRA", "relora_prune_ratio": "ReLoRA", "relora_cpu_offload": "ReLoRA", "jagged_restart_steps": "ReLoRA",
    "jagged_restart_warmup_steps": "ReLoRA", "jagged_restart_anneal_steps": "ReLoRA",
    "lisa_n_layers": "LISA layer sampling", "lisa_step_interval": "LISA layer sampling",
    "lisa_layers_attribute": "LISA layer sampling",
    "use_ray": "Ray-launched training", "ray_num_workers": "Ray-launched training",
    "gptq": "GPTQ-quantized base models", "gptq_disable_exllama": "GPTQ-quantized base models",
    "gptq_groupsize": "GPTQ-quantized base models (a retired Axolotl key)",
    "gptq_model_v1": "GPTQ-quantized base models (a retired Axolotl key)",
    "sample_packing_seq_len_multiplier": "sample_packing_seq_len_multiplier (a retired Axolotl key; use sequence_len)",
    "llmcompressor": "sparse fine-tuning with llmcompressor",
    "llama4_linearized_experts": "Llama 4 linearized experts",
    "neftune_noise_alpha": "NEFTune noisy embeddings", "noisy_embedding_alpha": "NEFTune noisy embeddings",
    "use_eaft": "EAFT", "use_onebitllms": "1-bit LLM training (onebitllms)",
    "peft": "peft options beyond LoRA's (e.g. LoftQ initialisation)", "reinit_weights": "re-initialised weights",
    "load_best_model_at_end": "loading the best checkpoint at the end",
    "sample_packing_sequentially": "sequential packing", "curriculum_sampling": "curriculum sampling",
    "max_packed_sequence_len": "max_packed_sequence_len (a retired Axolotl key, which Axolotl 0.19 refuses too; use "
                               "sample_packing with sequence_len)",
    "lr_scheduler_kwargs": "scheduler options",
    "optim_args": "optimizer options (optim_args)", "optim_target_modules": "GaLore / APOLLO target modules",
    "eval_table_size": "generation samples during evaluation", "eval_max_new_tokens": "generation samples during evaluation",
    "do_causal_lm_eval": "generation metrics during evaluation", "eval_causal_lm_metrics": "generation metrics during evaluation",
    "do_bench_eval": "benchmark evaluation",
    "mean_resizing_embeddings": "mean-initialised new embeddings", "fix_untrained_tokens": "fix_untrained_tokens",
    "embedding_lr": "per-group learning rates", "embedding_lr_scale": "per-group learning rates",
    "lr_groups": "per-group learning rates", "loraplus_lr_ratio": "LoRA+ learning rates",
    "rope_scaling": "RoPE scaling overrides", "model_kwargs": "model loading options (model_kwargs)",
    # keys of Axolotl's kernels plugin (axolotl/integrations/kernels/args.py)
    "nvfp4_merge_aware": "merge-aware NVFP4 LoRA (nvfp4_merge_aware: the forward fake-quantizes the merged expert "
                         "weight)",
    "nvfp4_merge_aware_start_step": "merge-aware NVFP4 LoRA (nvfp4_merge_aware)",
}
# Values that ask for nothing, per key (besides empty and false).
OFF: dict[str, tuple[Any, ...]] = {
    key: (1,) for key in ("context_parallel_size", "sequence_parallel_degree", "tensor_parallel_size",
                          "dp_shard_size", "dp_replicate_size", "expert_parallel_size", "ray_num_workers")
} | {"eval_table_size": (0,), "loraplus_lr_ratio": (0,)}

# Axolotl plugins: what tuner does with each (by the class name's module).
PLUGINS: dict[str, tuple[str, str]] = {
    "axolotl.integrations.liger": ("not applied", _KERNELS + "; its loss is tuner's own (" + _CCE.split(": ")[1] + ")"),
    "axolotl.integrations.cut_cross_entropy": ("not applied", _CCE),
    "axolotl.integrations.kernels": ("not applied", _KERNELS),
    "axolotl.integrations.swanlab": ("not applied", "SwanLab is not one of tuner's trackers (TensorBoard, W&B, MLflow)"),
    "axolotl.integrations.spectrum": ("error", "Spectrum layer selection"),
    "axolotl.integrations.expert_parallel": ("error", "expert parallelism"),
    "axolotl.integrations.diffusion": ("error", "diffusion language-model training"),
    "axolotl.integrations.llm_compressor": ("error", "sparse fine-tuning with llmcompressor"),
    "axolotl.integrations.kd": ("error", "knowledge distillation"),
    "axolotl.integrations.grokfast": ("error", "Grokfast gradient filtering"),
    "axolotl.integrations.lm_eval": ("error", "lm-eval benchmarks after training"),
}


def unsupported(capability: str, value: Any) -> str:
    return (f"{_show(value)}: not supported yet: {capability}. An Axolotl key tuner does not support yet; "
            "remove it (or leave it empty)")


# --------------------------------------------------------------------------- translation


def translate(data: dict[str, Any], lines: dict[KeyPath, Any]) -> list[Remark]:
    """Rewrite legacy and foreign keys in `data` (the top-level mapping, changed in place) and
    report what was read, what is not applied and what is not supported yet. `lines` (key path
    -> YAML line) gains an entry for every key moved to a new path."""
    remarks: list[Remark] = []
    for step in (_attention_flags, _attention_backend, _precision_aliases, _batch_size, _fsdp, _resume,
                 _strategies, _optimizer_aliases, _plugins, _legacy_values, _preference_aliases, _deepspeed_file,
                 _aliases, _empty_adapter, _mistral_common, _tables):
        remarks += step(data, lines)
    return remarks


def _move(data: dict, lines: dict, old: KeyPath, new: KeyPath, value: Any) -> None:
    target = data
    for part in new[:-1]:
        target = target.setdefault(part, {})
    target[new[-1]] = value
    if old in lines:
        lines.setdefault(new, lines[old])


LEGACY_ATTENTION = {  # Axolotl's deprecated flags, most specific first (as Axolotl resolves them)
    "xformers_attention": "xformers", "sage_attention": "sage", "flex_attention": "flex_attention",
    "flash_attention": "flash_attention_2", "sdp_attention": "sdpa", "eager_attention": "eager",
}


def _attention_flags(data: dict, lines: dict) -> list[Remark]:
    out = []
    chosen = []
    for key in [k for k in LEGACY_ATTENTION if k in data]:
        value = data.pop(key)
        if value is True:
            chosen.append(key)
        elif value not in (None, False):
            out.append(Remark((key,), "error", f"{_show(value)} is not valid: expected true or false"))
    if not chosen:
        return out
    if data.get("attn_implementation") is not None:
        return [Remark((chosen[0],), "error", f"attn_implementation and {chosen[0]} are both set; keep "
                                              f"attn_implementation (Axolotl deprecated {chosen[0]})")]
    first = chosen[0]
    impl = LEGACY_ATTENTION[first]
    _move(data, lines, (first,), ("attn_implementation",), impl)
    out.append(Remark((first,), "renamed", f"`{first}: true` is deprecated (Axolotl); read as "
                                           f"`attn_implementation: {impl}` (write that instead)"))
    return out


# attn_implementation values and the package each needs (found with find_spec, never imported).
ATTN_PACKAGES = {"flash_attention_2": ("flash_attn", "pip install flash-attn --no-build-isolation"),
                 "flash_attention_3": ("flash_attn_interface", "install FlashAttention-3 from its hopper/ folder")}
PATCHED_BACKENDS = {"xformers": "xFormers", "sage": "SageAttention", "fp8": "FP8 attention"}
ATTN_ALIASES = {"flash": "flash_attention_2", "flex": "flex_attention", "sdp": "sdpa"}
_SAME = "sdpa (PyTorch's fused attention) computes the same attention here"


def _attention_backend(data: dict, lines: dict) -> list[Remark]:
    value = data.get("attn_implementation")
    if not isinstance(value, str):
        return []
    path = ("attn_implementation",)
    if value in ATTN_ALIASES:
        return [Remark(path, "error", f"{value!r} is not valid: write the full name {ATTN_ALIASES[value]!r}")]
    why = None
    if value in ATTN_PACKAGES:
        package, install = ATTN_PACKAGES[value]
        if importlib.util.find_spec(package) is None:
            why = (f"not applied on this machine: {value} needs the {package} package and a CUDA GPU "
                   f"({install}); {_SAME}")
    elif value in PATCHED_BACKENDS:
        why = (f"not applied: {PATCHED_BACKENDS[value]} is an attention patch of Axolotl's (tuner does not "
               f"patch transformers); {_SAME}")
    elif "/" in value:
        why = (f"not applied: {value} is a kernel downloaded from the Hub at run time (tuner runs without the "
               f"network and the `kernels` package); {_SAME}")
    if why is None:
        return []
    data["attn_implementation"] = "sdpa"
    return [Remark(path, "not applied", why)]


DTYPES = {"bfloat16": "bf16", "bf16": "bf16", "float16": "fp16", "fp16": "fp16", "half": "fp16",
          "float32": None, "fp32": None, "float": None, "auto": "auto"}


def _precision_aliases(data: dict, lines: dict) -> list[Remark]:
    """`torch_dtype` (transformers) and Axolotl's `bfloat16` / `float16` / `float32` flags."""
    out = []
    explicit = {k for k in ("bf16", "fp16") if data.get(k) not in (None, False)}
    if "torch_dtype" in data:
        value = data.pop("torch_dtype")
        path = ("torch_dtype",)
        key = DTYPES.get(str(value).replace("torch.", "")) if value is not None else None
        if value is None:
            pass
        elif str(value).replace("torch.", "") not in DTYPES:
            out.append(Remark(path, "error", f"{_show(value)} is not valid: expected one of bfloat16, float16, "
                                             "float32, auto (tuner reads it as bf16 / fp16)"))
        elif explicit:
            out.append(Remark(path, "not applied", f"not applied: {', '.join(sorted(explicit))} decides the precision"))
        elif key == "auto":
            _move(data, lines, path, ("bf16",), "auto")
            out.append(Remark(path, "renamed", "`torch_dtype: auto` is a transformers key; read as `bf16: auto` "
                                               "(write that instead)"))
        elif key is None:
            out.append(Remark(path, "renamed", f"`torch_dtype: {value}` is a transformers key; tuner trains in "
                                               "fp32 with bf16 and fp16 off, their defaults (remove it)"))
        else:
            _move(data, lines, path, (key,), True)
            out.append(Remark(path, "renamed", f"`torch_dtype: {value}` is a transformers key; read as "
                                               f"`{key}: true` (write that instead)"))
    for flag, key in (("bfloat16", "bf16"), ("float16", "fp16"), ("float32", None)):
        if flag not in data:
            continue
        value = data.pop(flag)
        if value is not True:
            continue
        path = (flag,)
        if key is None:
            msg = ("not applied: bf16 / fp16 decide the precision" if explicit else
                   "`float32: true` (Axolotl) is tuner's default: bf16 and fp16 off (remove it)")
            out.append(Remark(path, "not applied" if explicit else "renamed", msg))
        elif data.get(key) is True:
            out.append(Remark(path, "renamed", f"`{flag}: true` (Axolotl: load the weights in {flag}) is covered "
                                               f"by `{key}: true` (remove it)"))
        elif explicit - {key}:
            out.append(Remark(path, "not applied", f"not applied: {', '.join(sorted(explicit))} decides the precision"))
        else:
            _move(data, lines, path, (key,), True)
            out.append(Remark(path, "renamed", f"`{flag}: true` (Axolotl: load the weights in {flag}) is read as "
                                               f"`{key}: true` (write that instead)"))
    return out


def _batch_size(data: dict, lines: dict) -> list[Remark]:
    """Axolotl's `batch_size`: gradient_accumulation_steps = batch_size // micro_batch_size when unset."""
    value = data.get("batch_size")
    if "batch_size" not in data:
        return []
    del data["batch_size"]
    if value is None:
        return []
    path = ("batch_size",)
    micro = data.get("micro_batch_size") or 1
    if not isinstance(value, int) or isinstance(value, bool) or value < 1 or not isinstance(micro, int):
        return [Remark(path, "error", f"{_show(value)} is not valid: expected a whole number >= 1")]
    accumulation = data.get("gradient_accumulation_steps")
    if accumulation is None:
        steps = max(1, value // micro)
        _move(data, lines, path, ("gradient_accumulation_steps",), steps)
        return [Remark(path, "renamed", f"`batch_size: {value}` is read as `gradient_accumulation_steps: {steps}` "
                                        f"(batch_size / micro_batch_size, as Axolotl; write that instead)")]
    if isinstance(accumulation, int) and micro * accumulation == value:
        return []
    return [Remark(path, "not applied", "not applied: micro_batch_size x gradient_accumulation_steps decides the "
                                        "batch (per process), as in Axolotl when both are set")]


FSDP1_STRATEGIES = {"FULL_SHARD": "full_shard", "SHARD_GRAD_OP": "shard_grad_op", "HYBRID_SHARD": "hybrid_shard"}
FSDP_NOT_APPLIED = {
    "limit_all_gathers": "accelerate's FSDP default", "sync_module_states": "accelerate's FSDP default",
    "use_orig_params": "accelerate's FSDP default (true)", "backward_prefetch": "accelerate's FSDP default",
    "forward_prefetch": "accelerate's FSDP default", "cpu_offload_pin_memory": "accelerate's FSDP default",
    "mixed_precision_policy": "tuner's bf16 / fp16 decide FSDP's mixed precision",
    "final_state_dict_type": "the final model is saved as a full state dict",
}


def _fsdp(data: dict, lines: dict) -> list[Remark]:
    """Top-level `fsdp_version`, `fsdp_config.fsdp_*` prefixes and FSDP1 keys, as Axolotl rewrites them."""
    out = []
    config = data.get("fsdp_config")
    if "fsdp_version" in data:
        version = data.pop("fsdp_version")
        if version is not None:
            if isinstance(config, dict) and config.get("fsdp_version") not in (None, version):
                out.append(Remark(("fsdp_version",), "error", f"fsdp_version: {version} and fsdp_config.fsdp_version: "
                                                             f"{config['fsdp_version']} differ; keep one"))
            elif config is None or isinstance(config, dict):
                data["fsdp_config"] = config = dict(config or {})
                _move(data, lines, ("fsdp_version",), ("fsdp_config", "fsdp_version"), version)
                out.append(Remark(("fsdp_version",), "renamed", f"top-level `fsdp_version: {version}` is read as "
                                                                 f"`fsdp_config.fsdp_version: {version}`"))
    if not isinstance(config, dict):
        return out
    config = data["fsdp_config"] = dict(config)
    for key in list(config):
        if not isinstance(key, str):
            continue
        path = ("fsdp_config", key)
        if key.startswith("fsdp_") and key != "fsdp_version":
            new = key[len("fsdp_"):]
            value = config.pop(key)
            if new in config:
                out.append(Remark(path, "error", f"fsdp_config.{key} and fsdp_config.{new} are both set; keep {new}"))
                continue
            config[new] = value
            if path in lines:
                lines.setdefault(("fsdp_config", new), lines[path])
            out.append(Remark(path, "renamed", f"`{key}` is deprecated (Axolotl drops the fsdp_ prefix); read as "
                                               f"`fsdp_config.{new}` (write that instead)"))
    if "version" in config:  # Axolotl's other spelling
        config.setdefault("fsdp_version", config.pop("version"))
    strategy = config.pop("sharding_strategy", None)
    if strategy is not None:
        path = ("fsdp_config", "sharding_strategy")
        name = FSDP1_STRATEGIES.get(str(strategy).upper()) or FSDP1_STRATEGIES.get(
            {"1": "FULL_SHARD", "2": "SHARD_GRAD_OP", "4": "HYBRID_SHARD"}.get(str(strategy), ""))
        if name is None:
            out.append(Remark(path, "error", f"{_show(strategy)} is not valid: expected one of "
                                             f"{', '.join(FSDP1_STRATEGIES)}"))
        else:
            options = list(data.get("fsdp") or []) if isinstance(data.get("fsdp"), list) else data.get("fsdp")
            if isinstance(options, list) and name not in options:
                options.append(name)
                data["fsdp"] = options
            out.append(Remark(path, "renamed", f"`sharding_strategy: {strategy}` is read as `{name}` in `fsdp`"))
    for key, why in FSDP_NOT_APPLIED.items():
        if key in config:
            value = config.pop(key)
            if value is not None:
                out.append(Remark(("fsdp_config", key), "not applied", f"not applied: {why}"))
    if not data.get("fsdp"):
        data["fsdp"] = ["full_shard", "auto_wrap"]
        out.append(Remark(("fsdp_config",), "renamed", "FSDP is on (fsdp_config without fsdp, as in Axolotl): "
                                                       "read as `fsdp: [full_shard, auto_wrap]`"))
    return out


def _resume(data: dict, lines: dict) -> list[Remark]:
    if "auto_resume_from_checkpoints" not in data:
        return []
    value = data.pop("auto_resume_from_checkpoints")
    if value is not True:
        return []
    path = ("auto_resume_from_checkpoints",)
    if data.get("resume_from_checkpoint") is not None:
        return [Remark(path, "not applied", "not applied: resume_from_checkpoint is set")]
    _move(data, lines, path, ("resume_from_checkpoint",), "auto")
    return [Remark(path, "renamed", "`auto_resume_from_checkpoints: true` is read as `resume_from_checkpoint: auto` "
                                    "(write that instead)")]


def _strategies(data: dict, lines: dict) -> list[Remark]:
    """HF Trainer's save_strategy / eval_strategy: accepted where they say what tuner does."""
    out = []
    has_eval = bool(data.get("val_set_size") or data.get("test_datasets"))
    for key, steps, per_epoch, what in (
        ("save_strategy", "save_steps", "saves_per_epoch", "checkpoints"),
        ("eval_strategy", "eval_steps", "evals_per_epoch", "evaluation"),
        ("evaluation_strategy", "eval_steps", "evals_per_epoch", "evaluation"),
    ):
        if key not in data:
            continue
        value = data.pop(key)
        by_steps = data.get(steps) is not None or bool(data.get(per_epoch))
        if value is None or value == "steps" and by_steps or value == "epoch" and not by_steps:
            continue
        if value == "no" and what == "evaluation" and not has_eval:
            continue
        if value in ("steps", "epoch"):
            cadence = f"{steps} or {per_epoch}"
            out.append(Remark((key,), "error", f"{key}: {value} contradicts {'no ' if value == 'steps' else ''}"
                                               f"{cadence}; tuner's {what} follow {cadence} (default: each epoch)"))
        else:
            out.append(Remark((key,), "error", unsupported(f"{key}: {value} (tuner's {what} follow {steps} / "
                                                           f"{per_epoch}, default each epoch)", value)))
    return out


OPTIMIZER_SUBSTITUTES = {
    "adamw_torch_8bit": "not applied: torchao's 8-bit AdamW; runs as bitsandbytes' 8-bit AdamW (the same "
                        "block-wise 8-bit states)",
    "adamw_torch_4bit": "not applied: torchao's 4-bit AdamW states; runs as bitsandbytes' 8-bit AdamW (twice "
                        "the optimizer-state memory of 4 bits)",
}
SCHEDULE_FREE = ("schedule_free_adamw", "schedule_free_radam", "schedule_free_sgd")
# Optimizers Axolotl accepts (transformers' OptimizerNames and Axolotl's own) that tuner does not build.
OTHER_OPTIMIZERS = (
    "muon", "dion", "came_pytorch", "optimi_adamw", "ao_adamw_4bit", "ao_adamw_8bit", "ao_adamw_fp8", "adopt_adamw",
    "sinkgd", "flash_adamw", "flash_adam", "flash_sgd", "flash_sgdw", "flash_lion", "q_galore_adamw8bit",
    "galore_adamw", "galore_adamw_8bit", "galore_adafactor", "galore_adamw_layerwise", "galore_adamw_8bit_layerwise",
    "galore_adafactor_layerwise", "apollo_adamw", "apollo_adamw_layerwise", "lomo", "adalomo", "grokadamw",
    "stable_adamw", "adamw_anyprecision", "adamw_apex_fused", "adamw_torch_xla", "adamw_torch_npu_fused",
)


def _optimizer_aliases(data: dict, lines: dict) -> list[Remark]:
    value = data.get("optimizer")
    path = ("optimizer",)
    if not isinstance(value, str):
        return []
    if value in OPTIMIZER_SUBSTITUTES:
        return [Remark(path, "not applied", OPTIMIZER_SUBSTITUTES[value])]
    if value in OTHER_OPTIMIZERS:
        return [Remark(path, "error", unsupported(f"the {value} optimizer; use adamw_torch_fused, adamw_bnb_8bit, "
                                                  "lion_8bit or adafactor", value))]
    if value in SCHEDULE_FREE:
        return [Remark(path, "error", unsupported(
            "schedule-free optimizers (the loop would have to switch them to their averaged weights for "
            "evaluation and saving); use adamw_torch_fused or adamw_bnb_8bit", value))]
    return []


# Axolotl's examples name DeepSpeed files of its repository (`deepspeed: deepspeed_configs/zero3_bf16.json`).
# tuner ships files with the same settings under these names (package data, tuner/config/deepspeed_configs/).
DEEPSPEED_CONFIGS = Path(__file__).parent / "deepspeed_configs"
DEEPSPEED_WHAT = {
    "zero1": "ZeRO-1", "zero2": "ZeRO-2, optimizer states offloaded to CPU", "zero3": "ZeRO-3",
    "zero3_bf16": "ZeRO-3, bf16", "zero3_bf16_cpuoffload_params": "ZeRO-3, bf16, parameters offloaded to CPU",
    "zero3_bf16_cpuoffload_all": "ZeRO-3, bf16, parameters and optimizer states offloaded to CPU",
}


def _deepspeed_file(data: dict, lines: dict) -> list[Remark]:
    """A repo-relative `deepspeed_configs/NAME.json` of Axolotl's that is not here: tuner's file of the same settings."""
    value = data.get("deepspeed")
    if not isinstance(value, str) or Path(value).expanduser().is_file():
        return []
    parts = Path(value).parts
    name = Path(value).stem
    if len(parts) < 2 or parts[-2] != "deepspeed_configs" or name not in DEEPSPEED_WHAT or not value.endswith(".json"):
        return []
    shipped = DEEPSPEED_CONFIGS / f"{name}.json"
    data["deepspeed"] = str(shipped)
    return [Remark(("deepspeed",), "renamed", f"{value} (a file of Axolotl's repository, not here) is read as tuner's "
                                              f"copy of its settings ({DEEPSPEED_WHAT[name]}): {shipped}")]


# Other spellings Axolotl accepts for a key tuner has (its pydantic aliases): spelling -> tuner's key.
ALIASES = {"model_revision": "revision_of_model"}


def _aliases(data: dict, lines: dict) -> list[Remark]:
    out = []
    if data.get("model_quantization_config") == "FineGrainedFP8Config":  # tuner's schema has Mxfp4Config only
        out.append(Remark(("model_quantization_config",), "error", unsupported(
            "FP8 base models (model_quantization_config: FineGrainedFP8Config)", data.pop("model_quantization_config"))))
        data.pop("model_quantization_config_kwargs", None)
    for old, new in ALIASES.items():
        if old not in data:
            continue
        value = data.pop(old)
        if value is None:
            continue
        if data.get(new) not in (None, value):
            out.append(Remark((old,), "error", f"{old} {_show(value)} and {new} {_show(data[new])} differ; keep {new}"))
            continue
        _move(data, lines, (old,), (new,), value)
        out.append(Remark((old,), "renamed", f"read as `{new}: {value}` (Axolotl's other name for it; write that instead)"))
    return out


def _empty_adapter(data: dict, lines: dict) -> list[Remark]:
    """`adapter:` written and left empty, with LoRA keys set (Axolotl's full fine-tuning examples keep their
    LoRA settings so): full fine-tuning, as in Axolotl, and the LoRA keys reported as not applied. With no
    `adapter` line at all, LoRA keys are still refused (a forgotten `adapter: lora`: schema.py)."""
    if "adapter" not in data or data["adapter"] is not None:
        return []
    unused = [k for k in data if isinstance(k, str) and k.startswith(("lora_", "peft_")) and not asks_nothing(data[k])]
    for key in unused:
        del data[key]
    if not unused:
        return []
    return [Remark(("adapter",), "not applied", f"`adapter:` is empty, so this is full fine-tuning (as in Axolotl); "
                                               f"not applied: {', '.join(unused)}")]


MISTRAL_INSTALL = "pip install 'tuner[mistral]'"
_MISTRAL = "tokenizer_use_mistral_common: true"


def _mistral_common(data: dict, lines: dict) -> list[Remark]:
    """`tokenizer_use_mistral_common: true` (tuner.data.mistral_common): mistral-common encodes conversations
    itself, with a vocabulary that cannot grow, so a Jinja template, added tokens or another tokenizer class
    cannot apply and are refused; `eot_tokens` is not applied (every assistant turn ends with the EOS)."""
    if data.get("tokenizer_use_mistral_common") is not True:
        return []
    from tuner.config.dataset_types import FALLBACK_PREFIX

    out = []
    no_template = (f"with {_MISTRAL}, mistral-common encodes conversations itself (no Jinja template); remove it, or "
                   "set tokenizer_use_mistral_common: false to render with the model's Hugging Face tokenizer")

    def templates(where: KeyPath, block: dict) -> None:
        name = block.get("chat_template")
        if not asks_nothing(name) and name != "tokenizer_default" and not str(name).startswith(FALLBACK_PREFIX):
            out.append(Remark(where + ("chat_template",), "error", f"{_show(name)}: {no_template}"))
        if not asks_nothing(block.get("chat_template_jinja")):
            out.append(Remark(where + ("chat_template_jinja",), "error", f"a template of its own: {no_template}"))

    templates((), data)
    for key in ("datasets", "test_datasets"):
        for i, ds in enumerate(data.get(key) or []):
            if not isinstance(ds, dict):
                continue
            templates((key, i), ds)
            kind = ds.get("type")
            if isinstance(kind, str) and "chat_template" in kind and kind != "chat_template":
                out.append(Remark((key, i, "type"), "error", unsupported(
                    f"{kind} rows encoded by mistral-common ({_MISTRAL} encodes type chat_template conversations "
                    "and the text types)", kind)))
            eot, eos = ds.get("train_on_eot"), ds.get("train_on_eos", "turn")
            if eot is not None and eot != eos:
                out.append(Remark((key, i, "train_on_eot"), "error",
                                  f"{_show(eot)}: with {_MISTRAL} the end of every assistant turn is the EOS, which "
                                  f"train_on_eos ({eos}) decides; remove train_on_eot or make it equal"))
    for key, why in (("special_tokens", "its vocabulary is fixed: mistral-common cannot add tokens"),
                     ("tokens", "its vocabulary is fixed: mistral-common cannot add tokens"),
                     ("tokenizer_type", "the tokenizer is mistral-common's, not a transformers class")):
        if not asks_nothing(data.get(key)):
            out.append(Remark((key,), "error", f"{_show(data[key])}: with {_MISTRAL}, {why}; remove {key}"))
    if not asks_nothing(data.get("eot_tokens")):
        data.pop("eot_tokens")
        out.append(Remark(("eot_tokens",), "not applied", f"not applied: with {_MISTRAL}, every assistant turn ends "
                                                          "with the EOS (</s>), and train_on_eos decides whether it trains"))
    if importlib.util.find_spec("mistral_common") is None:
        out.append(Remark(("tokenizer_use_mistral_common",), "warning",
                          f"the mistral-common package is not installed here; preprocess and train need it: {MISTRAL_INSTALL}"))
    return out


BNB_KWARGS = {"bnb_4bit_use_double_quant": "bnb_4bit_use_double_quant", "bnb_4bit_quant_type": "bnb_4bit_quant_type"}


def _legacy_values(data: dict, lines: dict) -> list[Remark]:
    """Values Axolotl or the HF Trainer accept in another shape than tuner's key."""
    out = []
    steps = data.get("warmup_steps")
    if isinstance(steps, float) and 0 < steps < 1:
        del data["warmup_steps"]
        if data.get("warmup_ratio") is not None:
            out.append(Remark(("warmup_steps",), "error", "warmup_steps and warmup_ratio are both set; keep one."))
        else:
            _move(data, lines, ("warmup_steps",), ("warmup_ratio",), steps)
            out.append(Remark(("warmup_steps",), "renamed", f"`warmup_steps: {steps}` (a fraction, as the HF Trainer "
                                                            f"reads it) is read as `warmup_ratio: {steps}` (write that instead)"))
    if data.get("gradient_checkpointing") == "offload":
        data["gradient_checkpointing"] = True
        out.append(Remark(("gradient_checkpointing",), "not applied", "`offload` (Axolotl: checkpointed activations "
                          "offloaded to CPU) is not applied: activations are checkpointed and recomputed on the device"))
    tokens = data.get("tokens")
    if isinstance(tokens, dict) and not isinstance(data.get("special_tokens"), dict):
        del data["tokens"]
        _move(data, lines, ("tokens",), ("special_tokens",), dict(tokens))
        out.append(Remark(("tokens",), "renamed", "`tokens` as a mapping of special tokens is read as `special_tokens` "
                                                  "(write that instead; `tokens` is a list of tokens to add)"))
    kwargs = data.get("bnb_config_kwargs")
    if "bnb_config_kwargs" in data:
        del data["bnb_config_kwargs"]
    if isinstance(kwargs, dict):
        for key, value in kwargs.items():
            path = ("bnb_config_kwargs", key)
            if key in BNB_KWARGS and data.get(BNB_KWARGS[key]) in (None, value):
                _move(data, lines, path, (BNB_KWARGS[key],), value)
                out.append(Remark(path, "renamed", f"read as `{BNB_KWARGS[key]}: {value}` (write that instead)"))
            elif key == "llm_int8_has_fp16_weight" and value is False or key == "bnb_4bit_compute_dtype":
                out.append(Remark(path, "not applied", "not applied: tuner's bf16 / fp16 decide the compute dtype"
                                  if key == "bnb_4bit_compute_dtype" else "not applied: bitsandbytes' default"))
            else:
                out.append(Remark(path, "error", unsupported(f"bitsandbytes option {key}", value)))
    elif kwargs is not None:
        out.append(Remark(("bnb_config_kwargs",), "error", f"{_show(kwargs)} is not valid: expected a mapping"))
    return out


def _plugins(data: dict, lines: dict) -> list[Remark]:
    value = data.get("plugins")
    if "plugins" not in data:
        return []
    del data["plugins"]
    if asks_nothing(value):
        return []
    if not isinstance(value, list):
        return [Remark(("plugins",), "error", f"{_show(value)} is not valid: expected a list of plugin class names")]
    out = []
    for i, name in enumerate(value):
        path = ("plugins", i)
        module = str(name).rsplit(".", 1)[0]
        kind, what = next(((k, w) for prefix, (k, w) in PLUGINS.items() if module.startswith(prefix)),
                          ("error", f"the Axolotl plugin {name}"))
        if kind == "error":
            out.append(Remark(path, "error", unsupported(what, name)))
        else:
            out.append(Remark(path, kind, f"{name}: not applied: {what}"))
    return out


def _preference_aliases(data: dict, lines: dict) -> list[Remark]:
    """dpo_beta (Axolotl: deprecated, use rl_beta)."""
    if "dpo_beta" not in data:
        return []
    value = data.pop("dpo_beta")
    if asks_nothing(value):
        return []
    if "rl_beta" in data and data["rl_beta"] is not None and data["rl_beta"] != value:
        return [Remark(("dpo_beta",), "error", f"dpo_beta {value} and rl_beta {data['rl_beta']} differ; keep rl_beta "
                                               "(dpo_beta is Axolotl's deprecated spelling)")]
    _move(data, lines, ("dpo_beta",), ("rl_beta",), value)
    return [Remark(("dpo_beta",), "renamed", f"`dpo_beta: {value}` is deprecated (Axolotl); read as `rl_beta: {value}` "
                                             "(write that instead)")]


def _tables(data: dict, lines: dict) -> list[Remark]:
    """NOT_APPLIED and UNSUPPORTED keys, and `rl`; a key the schema has a field for is the schema's
    (so a capability that lands needs no edit here to stop being refused)."""
    from tuner.config.axolotl_keys import TOP_LEVEL
    from tuner.config.schema import BLOCKS

    fields = {k for block in BLOCKS.values() for k in block.model_fields}
    out = []
    for key in [k for k in data if k not in fields]:
        if key in NOT_APPLIED:
            value = data.pop(key)
            if not asks_nothing(value, TOP_LEVEL.get(key)) and value not in ALREADY.get(key, ()):
                out.append(Remark((key,), "not applied", f"not applied: {NOT_APPLIED[key]}"))
        elif key in UNSUPPORTED:
            value = data.pop(key)
            if not asks_nothing(value, TOP_LEVEL.get(key), OFF.get(key, ())):
                out.append(Remark((key,), "error", unsupported(UNSUPPORTED[key], value)))
    rl = data.get("rl")
    if isinstance(rl, str) and rl not in RL_METHODS:
        del data["rl"]
        what = RL_CAPABILITIES.get(rl, f"reinforcement learning (rl: {rl})")
        out.append(Remark(("rl",), "error", unsupported(what, rl)))
    trl = data.get("trl")
    if isinstance(trl, dict):
        out += _trl_keys(trl)
    return out


# Axolotl 0.19's `trl:` keys (utils/schemas/trl.py) that tuner's TRLBlock has no field for -> Axolotl's default
# (a value equal to it asks for nothing) and the capability it would need.
_VLLM = "generation with vLLM (GPU only; tuner generates with transformers)"
_ASYNC = "Axolotl's asynchronous / streaming GRPO data producer"
AXOLOTL_TRL_ONLY: dict[str, tuple[Any, str]] = {
    "vllm_mode": (None, _VLLM), "vllm_server_host": ("0.0.0.0", _VLLM), "vllm_server_port": (8000, _VLLM),
    "vllm_server_timeout": (None, _VLLM), "vllm_guided_decoding_regex": (None, _VLLM),
    "vllm_enable_sleep_mode": (None, _VLLM), "vllm_importance_sampling_correction": (None, _VLLM),
    "vllm_importance_sampling_mode": (None, _VLLM), "vllm_importance_sampling_cap": (None, _VLLM),
    "vllm_importance_sampling_clip_min": (None, _VLLM), "vllm_importance_sampling_clip_max": (None, _VLLM),
    "vllm_sync_interval": (None, _VLLM), "vllm_lora_sync": (False, _VLLM),
    "generation_batch_size": (None, "a generation batch other than the optimizer step's (generation_batch_size)"),
    "importance_sampling_level": ("token", "sequence-level importance sampling (GSPO)"),
    "sync_ref_model": (False, "reference-model syncing (TR-DPO)"), "ref_model_mixup_alpha": (0.9, "reference-model syncing"),
    "ref_model_sync_steps": (64, "reference-model syncing"),
    "generation_kwargs": (None, "extra generation options (generation_kwargs)"),
    "chat_template_kwargs": (None, "chat template options (chat_template_kwargs)"),
    "use_liger_loss": (None, "Liger's fused GRPO loss"),
    "entropy_coef": (None, "an entropy bonus"), "use_adaptive_entropy": (None, "an entropy bonus"),
    "entropy_target": (None, "an entropy bonus"), "entropy_coef_delta": (None, "an entropy bonus"),
    "entropy_coef_min": (None, "an entropy bonus"), "entropy_coef_max": (None, "an entropy bonus"),
    "log_multimodal": (None, MULTIMODAL), "rollout_func": (None, "custom rollout functions (rollout_func)"),
    "multi_objective_aggregation": ("sum_then_normalize", "per-reward normalisation (GDPO's normalize_then_sum)"),
    "use_data_producer": (False, _ASYNC), "async_prefetch": (False, _ASYNC), "prefetch_depth": (None, _ASYNC),
    "streaming_partial_batch": (None, _ASYNC), "streaming_min_groups": (None, _ASYNC),
    "off_policy_mask_threshold": (None, "off-policy sequence masking"),
    "reward_num_workers": (1, "parallel reward workers"), "replay_buffer_size": (0, "a replay buffer"),
    "replay_recompute_logps": (True, "a replay buffer"), "reroll_start_fraction": (1.0, "re-rolling groups"),
    "reroll_max_groups": (1, "re-rolling groups"), "skip_zero_advantage_batches": (True, "skipping zero-advantage batches"),
}


def _trl_keys(trl: dict) -> list[Remark]:
    """Axolotl's `trl:` keys that tuner has no field for: refused as not supported yet unless they
    ask for nothing (then dropped); keys Axolotl does not have stay, for the schema's did-you-mean."""
    out = []
    for key in [k for k in trl if k in AXOLOTL_TRL_ONLY]:
        default, capability = AXOLOTL_TRL_ONLY[key]
        value = trl.pop(key)
        if not asks_nothing(value, default):
            out.append(Remark(("trl", key), "error", unsupported(capability, value)))
    return out


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
