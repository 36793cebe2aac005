"""What `tuner info` reads about a model without loading its weights: where the base is,
its config and classes, the stored tensors (safetensors headers only), and exact parameter
counts under the configured method (the model built on the meta device, with tuner's own
adapter code applied)."""

from __future__ import annotations

import copy
import json
import math
import re
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner import hub
from tuner.config.schema import TunerConfig
from tuner.errors import UserError
from tuner.models import heads, resolve
from tuner.models.adapter import apply_adapter
from tuner.models.inputs import Inputs, load_inputs
from tuner.models.load import decoder_layers, model_config, tokenizer_path

GiB = 1 << 30
MiB = 1 << 20

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


def stored_weights(inputs: Inputs) -> StoredWeights:
    """The stored weights of the base when known: the safetensors headers in its folder, or
    (a hub model not in the local cache, online) fetched by range requests."""
    stored = read_stored_weights(inputs.base.path)
    if inputs.base.kind == "hub" and not stored.files and not hub.offline():
        stored = _hub_weights(inputs.base.requested) or stored
    return stored


def _model_class(cfg: TunerConfig, config: Any) -> tuple[str, str]:
    """(the class training loads, why): the head follows the objective (tuner.models.heads)."""
    model = cfg.model
    name, why = heads.head_class(model, cfg.objective, config)
    if cfg.objective in ("reward", "classification"):
        resolve.model_class(model, name)  # a clean error for a misspelled name
        return heads.concrete_class(name, config), f"{why}; AutoModel is the backbone, AutoModelForXXX is backbone + head"
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
    """The model a config trains, as training would load it (the same `load_inputs`), but a hub
    model's weights are not downloaded: config, tokenizer and safetensors headers only."""
    inputs = load_inputs(cfg, weights=False)
    config = model_config(cfg.model, inputs.base)
    cls_name, cls_how = _model_class(cfg, config)
    tokenizer = inputs.tokenizer
    return ModelFacts(
        inputs.base, config, cls_name, cls_how, tokenizer, type(tokenizer).__name__,
        _tokenizer_how(cfg.model, inputs.base, tokenizer), inputs.new_token_ids, inputs.tokenizer_files,
        stored_weights(inputs),
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
    score_params: int = 0  # a sequence classifier's `score` head (reward models, classification); 0: a causal LM
    score_trains: bool = False


def _meta_model(cfg: TunerConfig, facts: ModelFacts) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    cls = resolve.model_class(cfg.model, facts.model_class)
    with torch.device("meta"):
        if cfg.objective in ("reward", "classification"):
            config = copy.deepcopy(facts.config)
            for key, value in plan_head(cfg, facts.config).config_kwargs().items():
                setattr(config, key, value)
            model = cls._from_config(config)
        elif cls is AutoModelForCausalLM:
            model = AutoModelForCausalLM.from_config(facts.config, trust_remote_code=cfg.model.trust_remote_code)
        else:
            model = cls._from_config(facts.config)
        rows = model.get_input_embeddings().weight.shape[0]
        if len(facts.tokenizer) > rows:
            model.resize_token_embeddings(len(facts.tokenizer), mean_resizing=False)
    return model


def plan_head(cfg: TunerConfig, config: Any) -> heads.Head:
    """The head `tuner info` counts: a reward model's one output; a classifier's classes from the
    config or the checkpoint (from the training data only once it is read: 2 are counted then)."""
    if cfg.objective == "reward":
        return heads.REWARD_HEAD
    m = cfg.model
    names = dict(m.id2label or {}) or {i: n for n, i in (m.label2id or {}).items()} or heads.checkpoint_labels(config) or {}
    count = m.num_labels or len(names) or 2
    return heads.Head(count, names, "regression" if count == 1 else "single_label_classification")


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
        if hasattr(module, "parameter_name") and hasattr(module, "lora_A"):
            skip.add(name)  # peft's LoRA on a parameter (lora_target_parameters, e.g. MoE experts): not a linear
            continue
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
    score = [(n, p) for n, p in named if n.split(".")[-2:-1] == ["score"] or ".score.modules_to_save." in n
             or ".score.original_module." in n]
    score_params = sum(p.numel() for n, p in score if ".original_module." not in n)
    score_trains = any(p.requires_grad for _, p in score)
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

    method, targets, target_count = describe_method(a, named, wrapped_parameters(model))

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
        score_params=score_params, score_trains=score_trains,
    )


def wrapped_parameters(model: Any) -> dict[str, str]:
    """peft's LoRA-on-a-parameter modules (lora_target_parameters), by module name -> the parameter
    each adapts (model.layers.0.mlp.experts.base_layer -> model.layers.0.mlp.experts.gate_up_proj)."""
    out = {}
    for name, module in model.named_modules():
        if hasattr(module, "parameter_name") and hasattr(module, "lora_A"):
            out[name] = f"{name.split('.base_layer')[0]}.{module.parameter_name}"
    return out


def describe_method(a: Any, named: list[tuple[str, Any]],
                    wrapped: dict[str, str] | None = None) -> tuple[str, list[str], int]:
    """(how the model trains, the trained module names summarised, how many modules) for the
    AdapterBlock `a` and the adapted model's named parameters; `wrapped` names the parameters that
    LoRA adapts directly (wrapped_parameters)."""
    if a.adapter:
        lora_names = sorted({(wrapped or {}).get(m, m) for m in {n.rsplit(".lora_A", 1)[0] for n, _ in named
                                                                  if ".lora_A." in n}})
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
    return method, targets, target_count
