"""Processes and engines: the Accelerator for one process, DDP, FSDP or DeepSpeed.

`tuner train` runs unchanged under `torchrun --nproc_per_node N -m tuner train` and
`accelerate launch -m tuner train`; `tuner train --num-processes N` starts the processes
itself (torchrun-style; the gloo backend on CPU). The world size tuner gets is checked
against the one asked for, because a launcher that silently starts one process (as
`accelerate launch --cpu --num_processes 2` does on some machines) would otherwise train
with a different batch than configured.

FSDP and DeepSpeed run on CUDA GPUs. On a machine without CUDA, accelerate would drop an
FSDP plugin and quietly run plain DDP, and DeepSpeed cannot start at all: tuner refuses both
with an error saying so rather than pretending.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tuner.config.schema import FSDPConfig, TrainingBlock
from tuner.errors import UserError

EXPECTED_WORLD_SIZE = "TUNER_EXPECTED_WORLD_SIZE"


def fsdp_plugin(t: TrainingBlock, mixed_precision: str = "no") -> Any:
    """accelerate's FSDP plugin for `fsdp` / `fsdp_config` (constructed without a GPU). Without
    `transformer_layer_cls_to_wrap`, accelerate wraps the model's own `_no_split_modules`."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    c = t.fsdp_config or FSDPConfig()
    options = set(t.fsdp or [])
    kwargs: dict[str, Any] = {
        "fsdp_version": c.fsdp_version,
        "cpu_offload": c.offload_params or "offload" in options,
        "state_dict_type": c.state_dict_type,
        "cpu_ram_efficient_loading": c.cpu_ram_efficient_loading,
        "activation_checkpointing": c.activation_checkpointing,
    }
    if c.fsdp_version == 2:
        kwargs["reshard_after_forward"] = c.reshard_after_forward and "shard_grad_op" not in options
    else:
        strategy = "SHARD_GRAD_OP" if "shard_grad_op" in options else "HYBRID_SHARD" if "hybrid_shard" in options else "FULL_SHARD"
        kwargs["sharding_strategy"] = strategy
    if "auto_wrap" in options or c.auto_wrap_policy:
        if c.auto_wrap_policy == "SIZE_BASED_WRAP":
            kwargs.update(auto_wrap_policy="size_based_wrap", min_num_params=c.min_num_params or 100_000_000)
        else:
            cls = c.transformer_layer_cls_to_wrap
            kwargs.update(auto_wrap_policy="transformer_based_wrap", transformer_cls_names_to_wrap=[cls] if cls else None)
    if mixed_precision in ("bf16", "fp16"):
        kwargs["mixed_precision_policy"] = mixed_precision
    return FullyShardedDataParallelPlugin(**kwargs)


def deepspeed_plugin(t: TrainingBlock) -> Any:
    """accelerate's DeepSpeed plugin for `deepspeed` (a JSON path or an inline mapping)."""
    from accelerate.utils import DeepSpeedPlugin

    config = t.deepspeed
    if isinstance(config, str):
        try:
            config = json.loads(Path(config).read_text())
        except (OSError, ValueError) as err:
            raise UserError(f"deepspeed: cannot read {t.deepspeed} as JSON: {err}") from None
    config = dict(config or {})
    # tuner owns the batch, accumulation and clipping: unset or "auto" values are tuner's (accelerate
    # cannot fill an "auto" micro-batch size, since tuner batches the rows itself, not a DataLoader).
    for key, value in (("train_micro_batch_size_per_gpu", t.micro_batch_size),
                       ("gradient_accumulation_steps", t.gradient_accumulation_steps),
                       ("gradient_clipping", t.max_grad_norm or 0.0)):
        if config.get(key, "auto") == "auto":
            config[key] = value
    return DeepSpeedPlugin(hf_ds_config=config)


def accelerator_kwargs(t: TrainingBlock, mixed_precision: str) -> dict[str, Any]:
    """Arguments for `Accelerator(...)`: device, precision, and the FSDP / DeepSpeed plugin."""
    import torch

    cuda = torch.cuda.is_available()
    world = int(os.environ.get(EXPECTED_WORLD_SIZE) or os.environ.get("WORLD_SIZE") or "1")
    if t.fsdp and t.dp_shard_size is not None and t.dp_shard_size != world:
        raise UserError(
            f"dp_shard_size: {t.dp_shard_size} with {world} training processes: not supported yet: sharding the model "
            "within groups of processes (HSDP). tuner's FSDP shards across all processes: set dp_shard_size to "
            f"{world}, or remove it."
        )
    if (t.fsdp or t.deepspeed is not None) and not cuda:
        engine = "fsdp" if t.fsdp else "deepspeed"
        raise UserError(
            f"{engine}: needs CUDA GPUs and this machine has none. On CPU, accelerate would drop FSDP and "
            "quietly run plain DDP, and DeepSpeed cannot start. Remove it to train with DDP "
            "(`tuner train --num-processes N`), or run on a GPU host."
        )
    from accelerate.utils import AutocastKwargs

    # autocast's cache of cast weights is off: with it, a forward that reuses a cast made by an
    # earlier forward in the same autocast region (KTO's KL batch under no_grad, then the policy's)
    # runs fewer cast ops than its recomputation in backward, which selective recomputation refuses
    # ("_to_copy invocation index N ... not found in storage"). Each use casts afresh instead.
    kwargs: dict[str, Any] = {"mixed_precision": mixed_precision, "cpu": not cuda,
                              "kwargs_handlers": [AutocastKwargs(cache_enabled=False)]}
    if t.fsdp:
        kwargs["fsdp_plugin"] = fsdp_plugin(t, mixed_precision)
    if t.deepspeed is not None:
        kwargs["deepspeed_plugin"] = deepspeed_plugin(t)
    return kwargs


def check_world_size(accelerator: Any) -> None:
    """Stop when the processes that came up are not the ones asked for."""
    expected = os.environ.get(EXPECTED_WORLD_SIZE) or os.environ.get("WORLD_SIZE") or "1"
    if accelerator.num_processes != int(expected):
        raise UserError(
            f"asked for {expected} training processes but accelerate runs {accelerator.num_processes}: the launcher "
            "did not start a distributed run (on CPU, `accelerate launch --cpu --num_processes N` can start a "
            "single process). Use `tuner train --num-processes N` or `torchrun --nproc_per_node N -m tuner train`."
        )


def launch(config: str, overrides: list[str], num_processes: int, nnodes: int = 1, node_rank: int = 0,
           master_addr: str | None = None, master_port: int | None = None) -> int:
    """Start `num_processes` training processes on this node with torch's launcher (torchrun)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={num_processes}",
           f"--nnodes={nnodes}", f"--node_rank={node_rank}"]
    if master_addr:
        cmd.append(f"--master_addr={master_addr}")
    if master_port:
        cmd.append(f"--master_port={master_port}")
    if nnodes == 1 and not master_port:
        cmd.append("--standalone")
    cmd += ["-m", "tuner", "train", config, *overrides]
    env = {**os.environ, EXPECTED_WORLD_SIZE: str(num_processes * nnodes)}
    return subprocess.call(cmd, env=env)
