"""`tuner info`: what would train, and how much memory one optimizer step needs, without
loading any weights.

What is read: config.json, the tokenizer, and the safetensors *headers* (dtype and shape of
every tensor; the tensor data is never read). A `.gguf` / `pkg:` base is converted once into
tuner's cache by `resolve_base`, as training would do. Parameter counts are exact: the model
is built on the meta device from its config and tuner's own adapter code
(`tuner.models.adapter.apply_adapter`) is applied to it, then `requires_grad` is counted.
QLoRA / 8-bit count as LoRA on the unquantized shapes; their weight bytes are those of the
quantized storage.

The memory plan
===============

Sizes are for one process and one micro-batch of T = micro_batch_size x sequence_len token
slots (every batch padded to sequence_len: the worst case) with K = micro_batch_size x
(sequence_len - 1) positions reaching the output head (every position trained: the worst
case). `a` is the compute dtype's size: 2 under bf16/fp16 autocast, 4 without mixed
precision, as `tuner.train.loop.mixed_precision` resolves it on this machine. h = hidden
size, i = intermediate size, H = attention heads, d = head dim, S = sequence_len, V = vocabulary.

weights
    full fine-tuning: 4 B/param (fp32 master weights; autocast computes in `a`);
    LoRA: the base in the compute dtype (`a` B/param), adapter weights fp32;
    QLoRA: 0.5 B per linear weight of the decoder layers + block scales (NF4/FP4, blocks of
    64: 1 B per block and 4 B per 256 blocks with double quantization, else 4 B per block);
    8-bit: 1 B + one fp32 scale per output row; peft's k-bit preparation turns every other
    weight (embeddings, norms) to fp32.
gradients           4 B per trainable parameter (trainable weights are fp32 in every method).
optimizer state     AdamW: exp_avg + exp_avg_sq, 8 B per trainable parameter.

activations: what autograd saves for backward, per token of one decoder layer
    Derived from how transformers' Llama layers save tensors and checked to the byte against
    `torch.autograd.graph.saved_tensors_hooks` (tests/unit/test_info.py: full fine-tuning in
    bf16 and fp32, eager attention, unfrozen_parameters, LoRA in bf16 and fp32, LoRA with
    dropout on some targets, QLoRA). The layer is walked in order; what an operation keeps for
    its input's gradient is counted only once a gradient can flow there (from a trainable
    weight below or earlier in the layer), what it keeps for its weight's gradient whenever
    that weight trains:
      norms      each RMSNorm keeps its input in fp32 and 1/rms: 4h + 4; + 4h (the normalized
                 tensor) when its weight trains.
      linears    a linear keeps its input only when its weight trains or it has LoRA. Under
                 autocast each keeps its own cast copy (a * in): q, k and v cast the fp32 norm
                 output separately, and peft casts every LoRA input to fp32 and autocast casts
                 it back. Without autocast the linears reading one tensor share it (4 * in,
                 once). o_proj shares sdpa's saved output unless a LoRA cast copies it;
                 down_proj keeps the gated product (a * i).
      attention  sdpa: q, k, v and the output, a * H * d each (transformers repeats k and v
                 to all heads when there is a mask, i.e. with packing or padding), 4 * H of
                 logsumexp, and the additive mask the kernel builds from the boolean one,
                 a * S. eager: q, k, v, the fp32 softmax and its `a` copy: (4 + a) * H * S.
      MLP        gate output, act(gate) and up output (kept by the activation and the
                 product): 3 * o * i, where o, a linear's output size, is `a` except on a
                 k-bit base, whose bitsandbytes layers return the fp32 input dtype (o = 4).
      LoRA       + a * r per adapted linear (lora_B's input); dropout: + 4 * in (the mask);
                 DoRA: + 2 * o * out, and a * in * (in + r) per linear (peft's identity trick).
    SmolLM2-135M at sequence_len 256, every linear trained or adapted: 32,428 B/token/layer
    for full fine-tuning in bf16, 29,084 for LoRA, 38,300 for QLoRA.
    Outside the layers: the final norm, the hidden states gathered at trained positions
    (K * h in the final norm's dtype) with their indices, ids, rotary tables.
    Gradient checkpointing: a layer keeps only its input (r * h, r the residual stream's size:
    4 for full fine-tuning and k-bit bases, `a` for LoRA); backward recomputes one layer at a
    time.
autocast weight copies
    Under autocast every fp32 matrix a matmul uses is cast to `a`: trainable ones once, cached
    until the forward ends; frozen ones (unfrozen_parameters) at each use. Copies that a
    layer's backward needs stay alive until it runs (without checkpointing). A head weight
    that is not in the compute dtype is cast again for every loss chunk (a * V * h).
loss logits
    tuner's CausalLMLoss runs the head + cross-entropy on chunks of c = min(K, CHUNK_TOKENS)
    positions, recomputed in backward. Forward holds the fp32 logits and their log-softmax
    (8 B per logit); backward the saved log-softmax, the NLL gradient and the log-softmax
    gradient: 12 * V * c bytes (+ 8 with Gemma's soft-cap). Models outside `PLAIN_HEAD` run
    the full logits: the log-softmax of all T positions stays saved (4 * V * T) and backward
    needs (12 + a) * V * T.
the peak
    A step's memory rises and falls; the plan takes the largest of these points, each on top of
    the weights and the optimizer state (allocated by the first step, present from then on):
      end of forward    activations + all weight copies + loss forward
      backward start    activations + copies still saved + the first chunk's loss backward
                        (usually the peak: every activation is still alive)
      layer recompute   checkpoints + one layer's activations, copies and gradients
      end of backward   gradients (+ the dense embedding gradient when embeddings are tied)
      optimizer step    gradients (+ unfused AdamW's sqrt(exp_avg_sq))
    With gradient accumulation the gradients stay alive through the later micro-batches.
    total = runtime + weights + optimizer state + step overhead + the largest point.
runtime and step overhead (the two fixed terms)
    runtime: 0.5 GiB for the process itself (Python, torch, transformers, the tokenizer, the
    prepared data): SmolLM2 runs measure 0.45-0.5 GiB of RSS before the model loads; a CUDA
    context is of the same order. Step overhead: 48 MiB that a first step adds besides its
    tensors (oneDNN kernel caches, the autograd graph's own objects, small blocks in malloc's
    arenas): SmolLM2 steps of 16 tokens, where every tensor term is small, measure 40-60 MiB
    of RSS above the tensors, for LoRA and full fine-tuning alike.

Measured on SmolLM2 (tests/e2e/test_memory_plan.py: full fine-tuning, LoRA and QLoRA, with
and without gradient checkpointing) the plan is within 2% of the peak RSS above the loaded
model. Not modelled: sharding (FSDP / DeepSpeed divide weights, gradients and optimizer state
over processes), torch.compile, mixture-of-experts routing (experts count as dense layers),
CUDA kernels' own choices (the formulas follow torch's CPU kernels), and allocator
overhead: glibc's malloc keeps freed blocks in its heap once its dynamic mmap threshold has
grown, so on CPU RSS can read up to a third above the plan (`MALLOC_MMAP_THRESHOLD_=131072`
makes RSS follow the tensors); CUDA's caching allocator has its own fragmentation.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner.config.schema import TunerConfig
from tuner.errors import UserError
from tuner.models.load import decoder_layers

GiB = 1 << 30
MiB = 1 << 20
RUNTIME_BYTES = GiB // 2
STEP_OVERHEAD_BYTES = 48 * MiB

SAFETENSORS_DTYPE_NAMES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
    "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool", "F8_E4M3": "float8_e4m3", "F8_E5M2": "float8_e5m2",
}

# Linear layers by their name inside a decoder layer.
ATTN_IN = {"q_proj", "k_proj", "v_proj", "qkv_proj", "query_key_value", "c_attn", "Wqkv", "query", "key", "value"}
MLP_IN = {"gate_proj", "up_proj", "gate_up_proj", "fc1", "w1", "w3", "c_fc", "dense_h_to_4h"}
GATED = {"gate_proj", "gate_up_proj", "w1"}


# --------------------------------------------------------------------------- sizes


def fmt_bytes(n: float) -> str:
    if abs(n) >= GiB:
        return f"{n / GiB:,.2f} GiB"
    if abs(n) >= MiB:
        return f"{n / MiB:,.1f} MiB"
    return f"{n / 1024:,.1f} KiB"


_UNITS = {
    "": 1, "b": 1,
    "k": 1 << 10, "kib": 1 << 10, "kb": 10**3,
    "m": 1 << 20, "mib": 1 << 20, "mb": 10**6,
    "g": 1 << 30, "gib": 1 << 30, "gb": 10**9,
    "t": 1 << 40, "tib": 1 << 40, "tb": 10**12,
}


def parse_size(text: str) -> int:
    """'24GiB', '24G' (binary), '24GB' (decimal), '16000MiB', '2.5 TiB' or a byte count -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS:
        raise UserError(
            f"--device-memory: {text!r} is not a size; write e.g. 24GiB, 80GB, 16000MiB (K/M/G/T alone mean KiB/MiB/GiB/TiB)"
        )
    value = float(match.group(1)) * _UNITS[unit]
    if value <= 0:
        raise UserError(f"--device-memory: {text!r} must be more than zero")
    return int(value)


def dtype_bytes(name: str) -> int:
    return {"bf16": 2, "fp16": 2, "no": 4}[name]


# --------------------------------------------------------------------------- the base model


@dataclass
class StoredWeights:
    """What the safetensors headers of the base folder say (no tensor data is read)."""

    files: list[str]
    tensors: int
    parameters: int
    bytes_on_disk: int
    by_dtype: dict[str, tuple[int, int]]  # dtype -> (parameters, bytes)
    other_files: list[str] = field(default_factory=list)  # weights in formats whose headers are not read

    @property
    def main_dtype(self) -> str | None:
        if not self.by_dtype:
            return None
        return max(self.by_dtype.items(), key=lambda kv: kv[1][1])[0]


def _safetensors_header(path: Path) -> dict[str, Any]:
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise UserError(f"base_model: {path} is not a safetensors file (too short)")
        (length,) = struct.unpack("<Q", head)
        if length > 512 * MiB:
            raise UserError(f"base_model: {path} is not a safetensors file (header of {length} bytes)")
        try:
            return json.loads(fh.read(length))
        except ValueError as err:
            raise UserError(f"base_model: {path}: unreadable safetensors header ({err})") from None


def read_stored_weights(folder: Path) -> StoredWeights:
    """dtype, shape and bytes of every tensor from the safetensors headers of `folder`."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError) as err:
            raise UserError(f"base_model: {index}: unreadable index ({err})") from None
        files = [folder / n for n in names]
    else:
        files = sorted(folder.glob("*.safetensors"))
    by_dtype: dict[str, list[int]] = {}
    tensors = params = on_disk = 0
    for f in files:
        if not f.is_file():
            continue
        on_disk += f.stat().st_size
        for name, meta in _safetensors_header(f).items():
            if name == "__metadata__":
                continue
            count = math.prod(meta["shape"])
            start, end = meta["data_offsets"]
            entry = by_dtype.setdefault(SAFETENSORS_DTYPE_NAMES.get(meta["dtype"], meta["dtype"].lower()), [0, 0])
            entry[0] += count
            entry[1] += end - start
            tensors += 1
            params += count
    others = sorted(p.name for p in folder.glob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt") and p.is_file())
    return StoredWeights([f.name for f in files if f.is_file()], tensors, params, on_disk,
                         {k: (v[0], v[1]) for k, v in by_dtype.items()}, others)


def _hub_weights(repo_id: str) -> StoredWeights | None:
    """Safetensors headers of a hub repo fetched by range requests (online only)."""
    try:
        from huggingface_hub import get_safetensors_metadata

        meta = get_safetensors_metadata(repo_id)
    except Exception:  # noqa: BLE001 - any failure: the headers are simply not known
        return None
    by_dtype: dict[str, list[int]] = {}
    tensors = params = size = 0
    for fmeta in meta.files_metadata.values():
        for info in fmeta.tensors.values():
            count = math.prod(info.shape)
            start, end = info.data_offsets
            entry = by_dtype.setdefault(SAFETENSORS_DTYPE_NAMES.get(info.dtype, info.dtype.lower()), [0, 0])
            entry[0] += count
            entry[1] += end - start
            tensors += 1
            params += count
            size += end - start
    return StoredWeights(sorted(meta.files_metadata), tensors, params, size, {k: (v[0], v[1]) for k, v in by_dtype.items()})


@dataclass
class ModelFacts:
    base: Any  # BaseModelSource
    config: Any  # transformers PretrainedConfig
    model_class: str
    model_class_how: str
    tokenizer: Any
    tokenizer_class: str
    tokenizer_class_how: str
    new_token_ids: list[int]
    tokenizer_files: list[Path]
    stored: StoredWeights | None


def _is_local_or_gguf(requested: str) -> bool:
    path = Path(requested).expanduser()
    return requested.startswith(("pkg:", ".", "/", "~")) or path.exists() or requested.endswith(".gguf")


def locate_base(model: Any) -> tuple[Any, StoredWeights | None]:
    """The base as a plain HF folder, and its stored weights when known.

    Local folders and GGUF files go through `resolve_base` (a GGUF is converted once, as for
    training). A hub id is fetched without its weights: config and tokenizer files only; the
    safetensors headers come from the local hub cache, or by range requests when online.
    """
    from tuner.models.load import BaseModelSource, hub_snapshot, resolve_base

    if _is_local_or_gguf(model.base_model):
        base = resolve_base(model)
        return base, read_stored_weights(base.path)
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    path = hub_snapshot(model.base_model, model, weights=False)
    base = BaseModelSource(path, model.base_model, "hub")
    stored = read_stored_weights(path)
    if not stored.files and not offline:
        stored = _hub_weights(model.base_model) or stored
    return base, stored


def _read_config(model: Any, base: Any) -> Any:
    from transformers import AutoConfig

    where = model.base_model_config or str(base.path)
    try:
        return AutoConfig.from_pretrained(where, trust_remote_code=model.trust_remote_code)
    except (ValueError, OSError) as err:
        text = " ".join(str(err).split())
        if "trust_remote_code" in text:
            raise UserError(
                f"base_model: {model.base_model!r} needs custom Python code from its repository; tuner does not "
                "run it unless you set `trust_remote_code: true` (only for code you trust)."
            ) from None
        raise UserError(f"base_model: cannot read the model config from {where}: {text[:300]}") from None


def _model_class(model: Any, config: Any) -> tuple[str, str]:
    from tuner.models import resolve

    archs = ", ".join(getattr(config, "architectures", None) or []) or "none"
    if model.model_type and model.model_type != resolve.AUTO_MODEL:
        resolve.model_class(model)  # a clean error for a misspelled name
        return model.model_type, f"model_type: {model.model_type} in the config (config.json architectures: {archs})"
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.model_type)
    if name is None:
        if getattr(config, "auto_map", None) and "AutoModelForCausalLM" in config.auto_map:
            name = config.auto_map["AutoModelForCausalLM"].split(".")[-1]
            return name, f"AutoModelForCausalLM -> auto_map in config.json (remote code; architectures: {archs})"
        raise UserError(
            f"base_model: model_type {config.model_type!r} has no causal-LM class in transformers "
            f"(architectures: {archs})"
        )
    return name, f"AutoModelForCausalLM -> model_type {config.model_type!r} in config.json (architectures: {archs})"


def _tokenizer_how(model: Any, base: Any, tokenizer: Any) -> str:
    from tuner.models.load import tokenizer_path

    if model.tokenizer_type and model.tokenizer_type != "AutoTokenizer":
        return f"tokenizer_type: {model.tokenizer_type} in the config (checked against the model's own on probe strings)"
    folder = tokenizer_path(model, base)
    config_file = (folder if folder.is_dir() else folder.parent) / "tokenizer_config.json"
    try:
        declared = json.loads(config_file.read_text()).get("tokenizer_class")
    except (OSError, ValueError):
        declared = None
    if declared:
        return f"AutoTokenizer -> tokenizer_class {declared!r} in tokenizer_config.json"
    return "AutoTokenizer -> the model_type's default tokenizer"


def describe_model(cfg: TunerConfig) -> ModelFacts:
    from tuner.models.load import load_tokenizer_and_new_ids, tokenizer_files

    base, stored = locate_base(cfg.model)
    config = _read_config(cfg.model, base)
    cls_name, cls_how = _model_class(cfg.model, config)
    tokenizer, new_ids = load_tokenizer_and_new_ids(cfg.model, base)
    return ModelFacts(
        base, config, cls_name, cls_how, tokenizer, type(tokenizer).__name__,
        _tokenizer_how(cfg.model, base, tokenizer), new_ids, tokenizer_files(cfg.model, base), stored,
    )


# --------------------------------------------------------------------------- parameters


@dataclass
class LinearInfo:
    name: str  # leaf name, e.g. q_proj
    role: str  # attn_in | attn_out | mlp_in | mlp_out
    in_features: int
    out_features: int
    weight_trains: bool
    lora_r: int = 0  # 0: no LoRA on this linear
    lora_dropout: float = 0.0
    dora: bool = False

    @property
    def saves_input(self) -> bool:
        return self.weight_trains or self.lora_r > 0


@dataclass
class LayerInfo:
    linears: list[LinearInfo]
    norms: list[bool]  # one entry per norm: does its weight train
    trains: bool  # any parameter of the layer trains
    active: bool = True  # gradients flow through it (something at or below it trains)
    flows_in: bool = True  # a gradient reaches its input (something below it trains)


@dataclass
class ParamFacts:
    total: int  # the model's parameters (the base, plus adapter weights)
    base_total: int  # the base model alone
    trainable: int
    method: str
    targets: list[str]  # module names trained (LoRA targets, unfrozen parameters, modules to save)
    target_count: int
    layers: list[LayerInfo]
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    head_trains: bool
    embed_trains: bool
    gated_mlp: bool
    linear_weights: int  # parameters of nn.Linear weights inside the decoder layers (quantized by QLoRA)
    linear_rows: int  # their output rows (8-bit keeps one fp32 scale per row)
    head_params: int  # the output head's weight (shared with the embedding when tied)
    adapter_params: int  # LoRA / DoRA / trainable-token parameters (fp32)
    saved_modules_params: int  # lora_modules_to_save copies
    dora_extra: int = 0  # a * in * (in + r) summed over DoRA linears (bytes at a = 1)
    largest_trainable: int = 0
    largest_linear: int = 0
    model_type: str | None = None
    softcap: float | None = None  # final_logit_softcapping (Gemma 2/3)


def _meta_model(cfg: TunerConfig, facts: ModelFacts) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    from tuner.models import resolve

    cls = resolve.model_class(cfg.model)
    with torch.device("meta"):
        if cls is AutoModelForCausalLM:
            model = AutoModelForCausalLM.from_config(facts.config, trust_remote_code=cfg.model.trust_remote_code)
        else:
            model = cls._from_config(facts.config)
        rows = model.get_input_embeddings().weight.shape[0]
        if len(facts.tokenizer) > rows:
            model.resize_token_embeddings(len(facts.tokenizer), mean_resizing=False)
    return model


def _layer_info(layer: Any) -> LayerInfo:
    import torch

    linears: list[LinearInfo] = []
    norms: list[bool] = []
    skip: set[str] = set()
    for name, module in layer.named_modules():
        if any(name.startswith(s + ".") for s in skip):
            continue
        leaf = name.rsplit(".", 1)[-1]
        in_attention = "attn" in name or "attention" in name
        if hasattr(module, "lora_A") and hasattr(module, "base_layer"):
            skip.add(name)
            base = module.base_layer
            adapter = next(iter(module.lora_A.keys()), None)
            dropout = module.lora_dropout[adapter] if adapter is not None else None
            linears.append(LinearInfo(
                leaf, _role(leaf, in_attention), base.in_features, base.out_features,
                base.weight.requires_grad, module.r.get(adapter, 0) if adapter is not None else 0,
                float(getattr(dropout, "p", 0.0)), bool(module.use_dora.get(adapter, False)) if adapter is not None else False,
            ))
        elif isinstance(module, torch.nn.Linear):
            linears.append(LinearInfo(leaf, _role(leaf, in_attention), module.in_features, module.out_features,
                                      module.weight.requires_grad))
        elif "norm" in type(module).__name__.lower() and getattr(module, "weight", None) is not None:
            norms.append(bool(module.weight.requires_grad))
    trains = any(p.requires_grad for p in layer.parameters())
    return LayerInfo(linears, norms, trains)


def _role(leaf: str, in_attention: bool) -> str:
    if in_attention:
        return "attn_in" if leaf in ATTN_IN else "attn_out"
    return "mlp_in" if leaf in MLP_IN else "mlp_out"


def _summarise(names: list[str]) -> list[str]:
    """Module names with layer indices collapsed: model.layers.3.self_attn.q_proj -> q_proj (x30)."""
    counts: dict[str, int] = {}
    for name in names:
        key = re.sub(r"^.*\.layers?\.\d+\.", "", name)
        key = re.sub(r"^(base_model\.model\.)?(model\.)?", "", key)
        counts[key] = counts.get(key, 0) + 1
    return [f"{k} (x{v})" if v > 1 else k for k, v in counts.items()]


def count_parameters(cfg: TunerConfig, facts: ModelFacts) -> ParamFacts:
    """Exact counts: the model on the meta device with tuner's own adapter code applied."""
    import torch

    from tuner.models.adapter import apply_adapter

    a = cfg.adapter
    model = _meta_model(cfg, facts)
    base_total = sum(p.numel() for p in model.parameters())
    head = model.get_output_embeddings()
    head_params = head.weight.numel() if head is not None else 0
    layers = decoder_layers(model)
    linear_weights = linear_rows = 0
    largest_linear = 0
    for layer in layers:
        for module in layer.modules():
            if isinstance(module, torch.nn.Linear):
                linear_weights += module.weight.numel()
                linear_rows += module.out_features
                largest_linear = max(largest_linear, module.weight.numel())
    # QLoRA / 8-bit: LoRA on the unquantized shapes (peft's k-bit preparation changes dtypes only).
    plain = a.model_copy(update={"load_in_4bit": False, "load_in_8bit": False})
    with warnings.catch_warnings():  # lora_model_dir weights "copied" onto meta tensors, peft notices
        warnings.simplefilter("ignore")
        model = apply_adapter(model, plain, gradient_checkpointing=False)
    named = list(model.named_parameters())
    total = sum(p.numel() for _, p in named)
    trainable = sum(p.numel() for _, p in named if p.requires_grad)
    adapter_params = sum(p.numel() for n, p in named if p.requires_grad and ("lora_" in n or "trainable_tokens" in n))
    saved_params = sum(p.numel() for n, p in named if p.requires_grad and ".modules_to_save." in n)
    largest = max((p.numel() for _, p in named if p.requires_grad), default=0)

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = decoder_layers(model)
    infos = [_layer_info(layer) for layer in layers]
    embeddings = base.get_input_embeddings()
    embed_trains = any(p.requires_grad for p in embeddings.parameters())
    out = base.get_output_embeddings()
    head_trains = out is not None and any(p.requires_grad for p in out.parameters())
    # peft's k-bit preparation with checkpointing makes the embedding output require grad
    flowing = embed_trains or bool((a.load_in_4bit or a.load_in_8bit) and cfg.training.gradient_checkpointing)
    for info in infos:
        info.flows_in = flowing
        info.active = flowing or info.trains
        flowing = flowing or info.trains

    if a.adapter:
        lora_names = sorted({n.rsplit(".lora_A", 1)[0] for n, _ in named if ".lora_A." in n})
        targets = _summarise(lora_names)
        extra = [f"{m} (trained in full)" for m in a.lora_modules_to_save or []]
        if a.peft_trainable_token_indices:
            extra.append(f"trainable token rows {a.peft_trainable_token_indices}")
        kind = "QLoRA" if a.adapter == "qlora" else ("LoRA on an 8-bit base" if a.load_in_8bit else "LoRA")
        if a.peft_use_dora:
            kind = f"DoRA ({kind})"
        method = f"{kind}, r={a.lora_r}, alpha={a.lora_alpha:g}" + (", rsLoRA" if a.peft_use_rslora else "")
        if a.lora_model_dir:
            method += f", continuing {a.lora_model_dir}"
        target_count = len(lora_names)
        targets += extra
    else:
        unfrozen = [n for n, p in named if p.requires_grad]
        if a.unfrozen_parameters:
            method = f"full fine-tuning of unfrozen_parameters {a.unfrozen_parameters}"
            targets = _summarise(unfrozen)
        else:
            method = "full fine-tuning (every parameter)"
            targets = ["all parameters"]
        target_count = len(unfrozen)

    dora_extra = sum(
        lin.in_features * (lin.in_features + lin.lora_r) for info in infos for lin in info.linears if lin.dora
    )
    c = facts.config
    text = c.get_text_config() if hasattr(c, "get_text_config") else c
    heads = int(getattr(text, "num_attention_heads", 1) or 1)
    hidden = int(getattr(text, "hidden_size", 0) or embeddings.weight.shape[1])
    head_dim = int(getattr(text, "head_dim", None) or hidden // heads)
    intermediate = int(getattr(text, "intermediate_size", 0) or 0)
    if not intermediate:
        mlp_in = [lin.out_features for info in infos[:1] for lin in info.linears if lin.role == "mlp_in"]
        intermediate = mlp_in[0] if mlp_in else 4 * hidden
    gated = any(lin.name in GATED for info in infos[:1] for lin in info.linears)
    return ParamFacts(
        total=total, base_total=base_total, trainable=trainable, method=method, targets=targets,
        target_count=target_count, layers=infos, hidden=hidden, heads=heads,
        kv_heads=int(getattr(text, "num_key_value_heads", None) or heads), head_dim=head_dim,
        intermediate=intermediate, vocab=int(embeddings.weight.shape[0]),
        tied=bool(getattr(text, "tie_word_embeddings", getattr(c, "tie_word_embeddings", False))),
        head_trains=head_trains, embed_trains=embed_trains, gated_mlp=gated,
        linear_weights=linear_weights, linear_rows=linear_rows,
        head_params=head_params, adapter_params=adapter_params, saved_modules_params=saved_params,
        dora_extra=dora_extra, largest_trainable=largest, largest_linear=largest_linear,
        model_type=getattr(c, "model_type", None), softcap=getattr(text, "final_logit_softcapping", None),
    )


# --------------------------------------------------------------------------- memory plan


@dataclass
class Regime:
    """The dtypes one training step runs in (see the module docstring)."""

    precision: str  # bf16 | fp16 | no
    a: int  # compute dtype bytes
    autocast: bool
    residual: int  # bytes of the residual stream
    out: int  # bytes of a linear layer's output
    final: int  # bytes of the final norm's output (the gathered hidden states)
    full: bool  # full fine-tuning (fp32 master weights)
    kbit: bool  # QLoRA / 8-bit base


def regime(cfg: TunerConfig, precision: str) -> Regime:
    a = dtype_bytes(precision)
    autocast = precision != "no"
    kbit = cfg.adapter.load_in_4bit or cfg.adapter.load_in_8bit
    full = cfg.adapter.adapter is None
    if full or kbit:
        residual = final = 4  # fp32 master weights; k-bit: peft casts embeddings and norms to fp32
    else:
        residual = final = a  # LoRA: the base is held in the compute dtype
    out = 4 if (kbit or not autocast) else a
    return Regime(precision, a, autocast, residual, out, final, full, kbit)


def layer_bytes_per_token(layer: LayerInfo, p: ParamFacts, r: Regime, seq: int, attn: str, mask: bool) -> int:
    """Bytes one decoder layer saves for backward, per token (see the module docstring).

    Walks the layer in order: norm, q/k/v, attention, o, norm, gate/up, MLP, down. What an
    operation keeps for its *input's* gradient is saved only once a gradient can flow there
    (from below, or from a trainable weight earlier in the layer); what it keeps for its own
    weight's gradient is saved whenever that weight trains.
    """
    if not layer.active:
        return 0
    a, h, i = r.a, p.hidden, p.intermediate
    alive = layer.flows_in
    norms = iter(layer.norms)
    by_role = {role: [lin for lin in layer.linears if lin.role == role]
               for role in ("attn_in", "attn_out", "mlp_in", "mlp_out")}
    total = 0

    def norm() -> None:
        nonlocal total, alive
        trains = next(norms, False)
        total += (4 * h + 4 if alive else 0) + (4 * h if trains else 0)
        alive = alive or trains

    def inputs(role: str) -> None:
        nonlocal total, alive
        members = [lin for lin in by_role[role] if lin.saves_input]
        if members:
            total += sum(a * lin.in_features for lin in members) if r.autocast else 4 * members[0].in_features
        lora(by_role[role])
        alive = alive or bool(members)

    def lora(linears: list[LinearInfo]) -> None:
        nonlocal total
        for lin in linears:
            if lin.lora_r:
                total += (a if r.autocast else 4) * lin.lora_r  # lora_B's input
                if lin.lora_dropout > 0 and alive:
                    total += 4 * lin.in_features  # the dropout mask (kept only for the input's gradient)
                if lin.dora:
                    total += 2 * r.out * lin.out_features

    norm()
    inputs("attn_in")
    if alive:
        q = a * p.heads * p.head_dim
        if attn == "eager":
            total += 3 * q + (4 + a) * p.heads * seq
        else:
            kv_heads = p.heads if (mask and attn == "sdpa") else p.kv_heads
            total += 2 * q + 2 * a * kv_heads * p.head_dim + 4 * p.heads + (a * seq if (mask and attn == "sdpa") else 0)
    for lin in by_role["attn_out"]:
        if lin.saves_input and (attn == "eager" or (r.autocast and lin.lora_r) or not alive):
            total += a * lin.in_features  # a copy of the attention output (else shared with sdpa's)
    lora(by_role["attn_out"])
    alive = alive or any(lin.saves_input for lin in by_role["attn_out"])
    norm()
    inputs("mlp_in")
    if alive:
        total += (3 if p.gated_mlp else 1) * r.out * i
    for lin in by_role["mlp_out"]:
        if lin.saves_input:
            total += (a if r.autocast else 4) * lin.in_features  # the gated product (or a cast copy of it)
    lora(by_role["mlp_out"])
    for _ in norms:  # extra norms (Gemma 2: pre/post feed-forward norms)
        norm()
    return total


def layer_copy_bytes(layer: LayerInfo, r: Regime) -> tuple[int, int]:
    """(cached, saved) bytes of autocast's compute-dtype copies of one layer's fp32 matrices.

    Trainable fp32 matrices are cast once and cached for the whole forward (and saved for
    backward); frozen fp32 matrices (full fine-tuning with unfrozen_parameters) are cast at
    each use and saved only where a gradient flows through them.
    """
    if not (r.autocast and r.a < 4) or not layer.active:
        return 0, 0
    cached = saved = 0
    for lin in layer.linears:
        weight = lin.in_features * lin.out_features
        if r.full and lin.weight_trains:
            cached += r.a * weight
        elif r.full and layer.flows_in:
            saved += r.a * weight
        if lin.lora_r:
            cached += r.a * lin.lora_r * (lin.in_features + lin.out_features)
    return cached, saved


@dataclass
class PlanLine:
    name: str
    bytes: int
    note: str


@dataclass
class MemoryPlan:
    precision: str
    tokens: int  # token slots of one micro-batch
    head_positions: int  # positions reaching the head in one micro-batch (worst case)
    chunk: int
    weights: int
    gradients: int
    optimizer: int
    activations: int
    weight_copies: int
    loss: int
    runtime: int
    phases: dict[str, int]  # candidate peaks above weights + optimizer state
    peak_phase: str
    total: int
    lines: list[PlanLine]
    layer_saved: list[int]  # bytes per decoder layer (no checkpointing), for the tests
    layer_copies: list[int]  # autocast weight copies per decoder layer (no checkpointing)
    outside_saved: int  # saved outside the layers (final norm, gathered hidden states, ...)
    notes: list[str] = field(default_factory=list)

    @property
    def step(self) -> int:
        """What one step adds to a process that holds the loaded model: total - runtime - weights."""
        return self.total - self.runtime - self.weights


def weight_bytes(cfg: TunerConfig, p: ParamFacts, r: Regime) -> tuple[int, str]:
    a = cfg.adapter
    adapter = 4 * p.adapter_params
    base = p.base_total
    if r.full:
        return 4 * p.total, "fp32 master weights (4 B/param); autocast computes in " + (
            "bf16" if r.precision == "bf16" else "fp16" if r.precision == "fp16" else "fp32")
    if a.load_in_4bit:
        quant = p.linear_weights
        scales = quant / 64 + quant / (64 * 256) * 4 if a.bnb_4bit_use_double_quant else quant / 64 * 4
        other = base - quant
        total = int(quant / 2 + scales) + 4 * other + adapter + r.a * p.saved_modules_params
        return total, (f"{quant:,} linear weights in 4 bit ({a.bnb_4bit_quant_type}, {quant / 2 / MiB:,.1f} MiB + "
                       f"{scales / MiB:,.1f} MiB scales), {other:,} others fp32, adapter fp32")
    if a.load_in_8bit:
        quant = p.linear_weights
        other = base - quant
        total = quant + 4 * p.linear_rows + 4 * other + adapter + r.a * p.saved_modules_params
        return total, f"{quant:,} linear weights in int8 (+ fp32 row scales), {other:,} others fp32, adapter fp32"
    name = {2: "bf16" if r.precision == "bf16" else "fp16", 4: "fp32"}[r.a]
    return r.a * base + adapter + r.a * p.saved_modules_params, f"base in {name} ({r.a} B/param), adapter fp32"


def plan_memory(cfg: TunerConfig, p: ParamFacts, precision: str) -> MemoryPlan:
    from tuner.train.loss import CHUNK_TOKENS, PLAIN_HEAD

    t, d = cfg.training, cfg.data
    r = regime(cfg, precision)
    a = r.a
    B, S = t.micro_batch_size, d.sequence_len
    T = B * S
    K = B * (S - 1)
    h, V = p.hidden, p.vocab
    attn = cfg.model.attn_implementation
    mask = True  # packing (position ids restart) or padding: transformers builds a mask for sdpa
    gc = t.gradient_checkpointing
    model_type = p.model_type

    weights, weights_note = weight_bytes(cfg, p, r)
    grads = 4 * p.trainable
    optimizer = 8 * p.trainable

    # attention spans a row: sequence_len, or the whole micro-batch when it is flattened into one row
    span = T if d.batch_flattening else S
    layer_saved = [layer_bytes_per_token(layer, p, r, span, attn, mask) * T for layer in p.layers]
    rope = 2 * T * p.head_dim * r.residual
    final_norm = 4 * h + 4 + (4 * h if r.full else 0)
    plain_head = model_type is None or model_type in PLAIN_HEAD
    outside = T * (final_norm + 8 + 1) + rope + B * S * S
    if plain_head:
        outside += K * (h * r.final + 8)
    if gc:
        activations = sum(T * h * r.residual for layer in p.layers if layer.active) + outside
    else:
        activations = sum(layer_saved) + outside + a * p.dora_extra  # DoRA: eye(in) and lora_A(eye) per linear

    # autocast copies of fp32 weights: cached for the forward, kept while saved
    layer_copies = [layer_copy_bytes(layer, r) for layer in p.layers]
    cached = sum(c for c, _ in layer_copies)
    copies = cached + sum(s for _, s in layer_copies)
    head_weight_bytes = 4 if (r.full or r.kbit) else a
    head_copy = a * p.head_params if (r.autocast and head_weight_bytes != a) else 0

    softcap = 8 if p.softcap else 0
    if plain_head:
        chunk = min(K, CHUNK_TOKENS)
        loss_fwd = (8 + softcap) * V * chunk
        loss_bwd = (12 + softcap) * V * chunk
        loss_saved = 0
    else:
        chunk = T
        loss_saved = 4 * V * T
        loss_fwd = (8 + a) * V * T
        loss_bwd = 12 * V * T + a * V * T
    chunks = math.ceil(K / chunk) if plain_head else 1
    head_grad = 4 * p.head_params if p.head_trains else 0
    accumulated = grads if t.gradient_accumulation_steps > 1 else 0
    in_flight = accumulated or (head_grad if chunks > 1 else 0)

    phases = {
        "end of forward": activations + loss_saved + (cached if gc else copies) + head_copy + loss_fwd + accumulated,
        "backward start": activations + (0 if gc else copies) + head_copy + loss_bwd + in_flight,
        "end of backward": grads + (4 * V * h if (p.tied and p.embed_trains) else 0),
        "optimizer step": grads + optimizer_temporaries(t.optimizer, p),
    }
    if gc:
        layer = max(layer_saved, default=0)
        per_layer_copies = max((c + s for c, s in layer_copies), default=0)
        transient = T * (2 * h * r.residual + 4 * r.out * p.intermediate)
        phases["layer recompute"] = activations + layer + per_layer_copies + transient + (accumulated or head_grad)
    if r.kbit:
        dequant = a * p.largest_linear  # bitsandbytes dequantizes one weight at a time
        for key in ("end of forward", "backward start"):
            phases[key] += dequant
    peak_phase = max(phases, key=phases.get)
    total = RUNTIME_BYTES + weights + optimizer + phases[peak_phase] + STEP_OVERHEAD_BYTES

    lines = [
        PlanLine("runtime", RUNTIME_BYTES, "Python, torch, tokenizer, data (fixed)"),
        PlanLine("weights", weights, weights_note),
        PlanLine("gradients", grads, f"fp32, {p.trainable:,} trainable parameters"),
        PlanLine("optimizer state", optimizer, f"AdamW ({t.optimizer}): exp_avg + exp_avg_sq, fp32"),
    ]
    per_token = max(layer_saved, default=0) // T if T else 0
    if gc:
        act_note = (f"gradient checkpointing: {sum(1 for x in p.layers if x.active)} layer inputs x {h} x "
                    f"{r.residual} B x {T:,} tokens; one layer ({fmt_bytes(max(layer_saved, default=0))}) recomputed at a time")
    else:
        act_note = (f"{sum(1 for x in p.layers if x.active)} layers x {per_token:,} B/token x {T:,} tokens "
                    f"+ {fmt_bytes(outside)} outside the layers")
    lines.append(PlanLine("activations", activations, act_note))
    if copies or head_copy:
        lines.append(PlanLine("weight copies", copies + head_copy,
                              f"autocast's {'bf16' if a == 2 else 'compute-dtype'} copies of fp32 weights"
                              + (" (dropped after forward: checkpointing)" if gc and copies else "")))
    if plain_head:
        loss_note = (f"head + cross-entropy on {chunks} chunk(s) of {chunk:,} positions x {V:,} vocabulary, "
                     f"recomputed in backward: {12 + softcap} B per logit")
    else:
        loss_note = f"full logits ({model_type} is not in tuner's gathered-head list): {V:,} x {T:,} positions"
    lines.append(PlanLine("loss logits", loss_bwd, loss_note))
    lines.append(PlanLine("step overhead", STEP_OVERHEAD_BYTES,
                          "kernel caches, autograd bookkeeping, small allocations (fixed)"))
    others = "; ".join(f"{k} {fmt_bytes(v)}" for k, v in phases.items() if k != peak_phase)
    lines.append(PlanLine(
        "total", total,
        f"runtime + weights + optimizer state + step overhead + the largest point of the step: {peak_phase} "
        f"{fmt_bytes(phases[peak_phase])} (others: {others})",
    ))
    notes = []
    if t.gradient_accumulation_steps > 1:
        notes.append(f"gradient accumulation ({t.gradient_accumulation_steps}): gradients stay alive through the micro-batches")
    if t.fsdp or t.deepspeed is not None:
        notes.append("FSDP / DeepSpeed shard weights, gradients and optimizer state over processes: not modelled (one process, unsharded)")
    if t.torch_compile:
        notes.append("torch_compile: not modelled (on CPU a compiled step used ~0.7x the eager step memory)")
    return MemoryPlan(
        precision=precision, tokens=T, head_positions=K, chunk=chunk, weights=weights, gradients=grads,
        optimizer=optimizer, activations=activations, weight_copies=copies + head_copy, loss=loss_bwd,
        runtime=RUNTIME_BYTES, phases=phases, peak_phase=peak_phase, total=total, lines=lines,
        layer_saved=layer_saved, layer_copies=[c + s for c, s in layer_copies], outside_saved=outside, notes=notes,
    )


def optimizer_temporaries(name: str, p: ParamFacts) -> int:
    """Fused AdamW updates in place. The unfused one computes sqrt(exp_avg_sq) as a new tensor:
    one parameter at a time on CPU, for all of them at once (foreach) on CUDA."""
    if name == "adamw_torch_fused":
        return 0
    import torch

    return 4 * (p.trainable if torch.cuda.is_available() else p.largest_trainable)


def resolve_precision(cfg: TunerConfig) -> tuple[str, str | None]:
    """(precision, note): as the training loop resolves it on this machine."""
    from tuner.train.loop import mixed_precision

    try:
        return mixed_precision(cfg.training), None
    except UserError as err:
        t = cfg.training
        wanted = "fp16" if t.fp16 is True else "bf16"
        return wanted, f"planned for {wanted} as configured, but training on this machine would stop: {err}"


def memory_plan(cfg: TunerConfig, facts: ModelFacts | None = None, params: ParamFacts | None = None) -> MemoryPlan:
    """The memory plan of `cfg` (describes the model and counts parameters when not given)."""
    facts = facts or describe_model(cfg)
    params = params or count_parameters(cfg, facts)
    return plan_memory(cfg, params, resolve_precision(cfg)[0])


# --------------------------------------------------------------------------- device


def detect_device_memory(spec: str | None) -> tuple[int, str]:
    """(bytes, what it is): --device-memory, else the CUDA device, else this machine's RAM."""
    if spec:
        return parse_size(spec), f"--device-memory {spec}"
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return int(props.total_memory), f"CUDA device 0 ({props.name})"
    import psutil

    return int(psutil.virtual_memory().total), "this machine's RAM (no CUDA device)"


def fit_line(plan: MemoryPlan, cfg: TunerConfig, size: int, what: str) -> str:
    share = plan.total / size
    if plan.total <= size:
        return f"fits: {fmt_bytes(plan.total)} of {fmt_bytes(size)} ({share:.0%}) on {what}"
    hints = []
    if not cfg.training.gradient_checkpointing:
        hints.append("gradient_checkpointing: true")
    if cfg.training.micro_batch_size > 1:
        hints.append("a smaller micro_batch_size (with gradient_accumulation_steps)")
    if cfg.adapter.adapter is None:
        hints.append("adapter: lora (or qlora)")
    elif cfg.adapter.adapter == "lora" and not cfg.adapter.load_in_8bit:
        hints.append("adapter: qlora with load_in_4bit: true")
    hint = f"; try {', '.join(hints)}" if hints else ""
    return f"does NOT fit: {fmt_bytes(plan.total)} needed, {fmt_bytes(size)} on {what} ({share:.0%}){hint}"


# --------------------------------------------------------------------------- data


def data_lines(cfg: TunerConfig, facts: ModelFacts) -> list[str]:
    """Rows, tokens and steps from the prepared-dataset cache, when it is there (never prepares)."""
    import numpy as np

    from tuner.data import cache, templates
    from tuner.data.load import local_sources
    from tuner.data.pack import Batches
    from tuner.data.pipeline import split_eval
    from tuner.data.tokenize import IGNORE
    from tuner.train.loop import StepPlan

    d, t = cfg.data, cfg.training
    data_ids = []
    for i, ds in enumerate(d.datasets):
        local = local_sources(ds, i, "datasets")
        if local is None:
            return [f"datasets[{i}] is a hub dataset ({ds.path}): its fingerprint needs the dataset loaded, "
                    "so the prepared cache is not checked here (`tuner inspect` shows the data)"]
        data_ids += [f"file:{cache.file_sha256(src.file)}" for src in local]
    template = templates.resolve(d, facts.tokenizer)
    fp, _ = cache.fingerprint(cfg, "datasets", facts.tokenizer_files, data_ids, template)
    root = Path(d.dataset_prepared_path)
    if not (root / fp).is_dir():
        return [f"not prepared yet ({root / fp} does not exist): `tuner preprocess` prepares it, then info shows "
                "rows, tokens and steps"]
    found = cache.load(root, fp)
    if found is None:
        return [f"{root / fp} is incomplete and was removed; `tuner preprocess` prepares it again"]
    rows, meta = found
    stats = meta.get("stats", {})
    if d.test_datasets:
        train, n_eval = rows, "test_datasets"
    else:
        train, held = split_eval(rows, d.val_set_size, t.seed)
        n_eval = "no evaluation rows" if held is None else f"{held.num_rows:,} held out (val_set_size)"
    batches = Batches(train, facts.tokenizer.pad_token_id, d.sequence_len, d.sample_packing,
                      d.pad_to_multiple_of, d.pad_to_sequence_len, d.batch_flattening)
    plan = StepPlan.build(batches.units, t, 1)
    tokens = sum(batches.lengths)
    labels = train.with_format("numpy")["labels"]
    trained = int(sum(int((np.asarray(lab)[1:] != IGNORE).sum()) for lab in labels))
    lines = [
        f"prepared     {root / fp}",
        f"rows         {stats.get('rows', rows.num_rows):,} prepared; {train.num_rows:,} train, {n_eval}",
        f"tokens       {tokens:,} train tokens, {trained:,} trained ({trained / max(tokens, 1):.0%})",
        f"steps        {plan.steps_per_epoch:,} per epoch ({batches.units:,} "
        f"{'packed rows' if d.sample_packing else 'rows'} / micro_batch_size {t.micro_batch_size} / "
        f"gradient_accumulation_steps {t.gradient_accumulation_steps}, one process); "
        f"{plan.total_steps:,} in this run",
        f"per step     {tokens / plan.steps_per_epoch:,.0f} tokens, {trained / plan.steps_per_epoch:,.0f} trained (average)",
    ]
    if d.sample_packing:
        lines.append(f"packing      {batches.efficiency:.1%} of the token slots hold real tokens")
    return lines


# --------------------------------------------------------------------------- the report


def _config_lines(config: Any, sequence_len: int) -> list[str]:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    get = lambda *names: next((getattr(text, n) for n in names if getattr(text, n, None) is not None), None)  # noqa: E731
    heads = get("num_attention_heads")
    hidden = get("hidden_size")
    head_dim = get("head_dim") or (hidden // heads if hidden and heads else None)
    context = get("max_position_embeddings", "n_positions", "max_sequence_length")
    rope = get("rope_parameters", "rope_scaling")
    theta = get("rope_theta")
    if isinstance(rope, dict):
        rope_text = ", ".join(f"{k} {v}" for k, v in rope.items() if v is not None)
    else:
        rope_text = "none" if theta is None else ""
    if theta is not None and "rope_theta" not in rope_text:
        rope_text = (rope_text + ", " if rope_text else "") + f"rope_theta {theta}"
    tied = getattr(text, "tie_word_embeddings", getattr(config, "tie_word_embeddings", None))
    lines = [
        f"layers {get('num_hidden_layers', 'n_layer')}, hidden size {hidden}, intermediate {get('intermediate_size')}, "
        f"heads {heads} (head dim {head_dim}), KV heads {get('num_key_value_heads') or heads}",
        f"vocabulary {get('vocab_size'):,}, context length {context:,}" if context else f"vocabulary {get('vocab_size')}",
        f"tied input/output embeddings: {'yes' if tied else 'no'}; RoPE: {rope_text or 'none'}"
        + (f"; sliding window {get('sliding_window')}" if get("sliding_window") else ""),
    ]
    if context and sequence_len > context:
        lines.append(f"WARNING: sequence_len {sequence_len} is longer than the model's context length {context}")
    return lines


def info_report(cfg: TunerConfig, device_memory: str | None) -> str:
    """What `tuner info` prints: model and tokenizer, parameters, memory plan, data."""
    size, size_what = detect_device_memory(device_memory)
    facts = describe_model(cfg)
    params = count_parameters(cfg, facts)
    precision, precision_note = resolve_precision(cfg)
    plan = plan_memory(cfg, params, precision)
    t, d = cfg.training, cfg.data

    out = ["model"]
    base = facts.base
    where = {"gguf": "converted from GGUF once, cached", "hub": "hub cache", "folder": "local folder"}[base.kind]
    out.append(f"  base_model       {base.requested}")
    if str(base.path) != base.requested:
        out.append(f"  folder           {base.path} ({where})")
    out.append(f"  model class      {facts.model_class}: {facts.model_class_how}")
    out.append(f"  tokenizer class  {facts.tokenizer_class}: {facts.tokenizer_class_how}; "
               f"{len(facts.tokenizer):,} tokens" + (f" ({len(facts.new_token_ids)} added)" if facts.new_token_ids else ""))
    for k, line in enumerate(_config_lines(facts.config, d.sequence_len)):
        out.append(f"  {'config' if k == 0 else '':<15}  {line}")
    stored = facts.stored
    if stored is not None and stored.files:
        dtypes = ", ".join(f"{k} {v[0]:,} params" for k, v in sorted(stored.by_dtype.items(), key=lambda kv: -kv[1][1]))
        out.append(f"  stored weights   {stored.main_dtype}: {stored.tensors:,} tensors, {stored.parameters:,} parameters "
                   f"({dtypes}), {fmt_bytes(stored.bytes_on_disk)} on disk in {len(stored.files)} safetensors file(s)")
    elif stored is not None and stored.other_files:
        out.append(f"  stored weights   {', '.join(stored.other_files[:4])} (not safetensors: tuner reads only safetensors "
                   "headers without loading)")
    else:
        out.append("  stored weights   unknown (no safetensors headers available here)")

    out.append("")
    out.append("parameters")
    out.append(f"  total            {params.total:,}" + (f" (base {params.base_total:,})" if params.total != params.base_total else ""))
    out.append(f"  method           {params.method}")
    share = params.trainable / max(params.total, 1)
    out.append(f"  trainable        {params.trainable:,} ({share:.2%})")
    shown = params.targets[:12]
    out.append(f"  targets          {', '.join(shown)}" + (f", ... ({len(params.targets)} in all)" if len(params.targets) > 12 else "")
               + (f" - {params.target_count} modules" if cfg.adapter.adapter else ""))

    out.append("")
    prec = {"bf16": "bf16 mixed precision", "fp16": "fp16 mixed precision", "no": "fp32 (no mixed precision)"}[precision]
    quant = " on a 4-bit base" if cfg.adapter.load_in_4bit else " on an 8-bit base" if cfg.adapter.load_in_8bit else ""
    out.append(
        f"memory plan: one optimizer step, micro_batch_size {t.micro_batch_size} x sequence_len {d.sequence_len} = "
        f"{plan.tokens:,} token slots per micro-batch, {prec}{quant}, {cfg.model.attn_implementation} attention, "
        f"gradient checkpointing {'on' if t.gradient_checkpointing else 'off'}, "
        f"{'sample packing' if d.sample_packing else 'flattened batches' if d.batch_flattening else 'padded batches'}"
    )
    width = max(len(line.name) for line in plan.lines)
    for line in plan.lines:
        out.append(f"  {line.name:<{width}}  {fmt_bytes(line.bytes):>11}  {line.note}")
    out.append(f"  {'device':<{width}}  {fmt_bytes(size):>11}  {fit_line(plan, cfg, size, size_what)}")
    notes = list(plan.notes)
    if precision_note:
        notes.insert(0, precision_note)
    notes.append("worst case: every row padded to sequence_len and every position trained; the formulas are in "
                 "tuner/models/info.py")
    import torch

    if not torch.cuda.is_available() and not device_memory:
        notes.append("on CPU, glibc malloc keeps freed blocks in its heap, so RSS can exceed the plan by up to a third; "
                     "MALLOC_MMAP_THRESHOLD_=131072 makes RSS follow the tensors")
    out += [f"  note: {n}" for n in notes]

    out.append("")
    out.append("data")
    try:
        out += [f"  {line}" for line in data_lines(cfg, facts)]
    except UserError as err:
        out.append(f"  cannot check the prepared data: {err}")
    return "\n".join(out)
