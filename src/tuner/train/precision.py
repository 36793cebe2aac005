"""The precision a run trains in: accelerate's mixed_precision from `bf16` / `fp16`, and the
dtype the frozen weights are held in."""

from __future__ import annotations

from pathlib import Path

import torch

from tuner.config.schema import TrainingBlock
from tuner.errors import UserError

COMPUTE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


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


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype autocast computes in (fp32 without mixed precision)."""
    return COMPUTE_DTYPES.get(precision, torch.float32)


def apply_tf32(t: TrainingBlock) -> str | None:
    """`tf32`: TensorFloat-32 matmuls for fp32 work on CUDA GPUs that have it (Ampere and
    newer; `auto`: on where available). Returns a note when a `tf32: true` cannot apply."""
    if not torch.cuda.is_available():
        return "tf32: true is not applied on this machine (no CUDA GPU)" if t.tf32 is True else None
    on = t.tf32 is True or (t.tf32 == "auto" and torch.cuda.get_device_capability() >= (8, 0))
    torch.backends.cuda.matmul.fp32_precision = "tf32" if on else "ieee"
    torch.backends.cudnn.conv.fp32_precision = "tf32" if on else "ieee"
    return None
