"""`tuner export-gguf`: the trained model as one GGUF file for llama.cpp, Ollama or LM Studio.

A training output folder holding an adapter is first merged into its unquantized base (by
`tuner.export.merge`, in float32, into a temporary folder); a full model folder is read as
it is. The file then gets, through the `gguf` package (llama.cpp's own Python library):

  * the architecture's hyperparameters under llama.cpp's keys (`llama.block_count`, ...),
  * every weight under its llama.cpp name (gguf's tensor-name map), in the requested type,
  * the tokenizer: tokens, token types, merges, bos/eos/unk/pad ids, whether BOS/EOS are
    added, the pre-tokenizer llama.cpp must use, and a chat template (see `chat_template`).

llama.cpp's conventions that its converter (convert_hf_to_gguf.py) applies, and so does this:

  * Llama and Mistral (llama.cpp's `llama` architecture): the rows of the q and k
    projections are reordered within each head, from Hugging Face's rotate-half rotary
    layout (pairs i and i + d/2) to llama.cpp's interleaved one (pairs 2i and 2i + 1).
    Qwen2 and Gemma run llama.cpp's NeoX-style rotary and keep the rows as they are.
  * Gemma: RMSNorm weights are stored as 1 + w (Hugging Face's GemmaRMSNorm multiplies by
    1 + w, llama.cpp by the stored value); there is no output matrix (llama.cpp reuses the
    embedding); the sqrt(hidden_size) embedding scale is llama.cpp's own, nothing is stored.
  * Tied embeddings: no `output.weight`; llama.cpp reuses `token_embd.weight`.
  * 1-D tensors (norms, biases) stay float32. A 2-D tensor whose rows do not split into the
    quantization's blocks is written as f16 instead (and reported). For the 4- and 5-bit
    types the embedding and output matrices are written as q8_0.

The tensors are converted and written one at a time (two passes over the safetensors), so
memory holds one tensor, not the model.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner.errors import UserError, did_you_mean

log = logging.getLogger("tuner")


@dataclass(frozen=True)
class Family:
    """How one Hugging Face `model_type` becomes a llama.cpp architecture."""

    arch: str  # gguf.MODEL_ARCH member
    permute_qk: bool  # llama.cpp's `llama` graph uses interleaved rotary pairs
    activation: str = "silu"  # the only MLP activation llama.cpp's graph for it computes
    norm_shift: float = 0.0  # added to every `*norm.weight`
    has_output: bool = True  # False: llama.cpp always reuses the embedding as output
    head_dim_keys: bool = False  # always write attention.key_length / value_length


FAMILIES: dict[str, Family] = {
    "llama": Family("LLAMA", permute_qk=True),
    "mistral": Family("LLAMA", permute_qk=True),  # llama.cpp runs Mistral as Llama
    "qwen2": Family("QWEN2", permute_qk=False),
    "gemma": Family("GEMMA", permute_qk=False, activation="gelu_pytorch_tanh", norm_shift=1.0, has_output=False,
                    head_dim_keys=True),
}

# --quant: the types the gguf package can write in Python, and the file type each declares.
# K-quants and i-quants need llama.cpp's `llama-quantize` (run it on the f16 file).
QUANTS: dict[str, tuple[str, str]] = {
    "f32": ("F32", "ALL_F32"),
    "f16": ("F16", "MOSTLY_F16"),
    "bf16": ("BF16", "MOSTLY_BF16"),
    "q8_0": ("Q8_0", "MOSTLY_Q8_0"),
    "q5_1": ("Q5_1", "MOSTLY_Q5_1"),
    "q5_0": ("Q5_0", "MOSTLY_Q5_0"),
    "q4_1": ("Q4_1", "MOSTLY_Q4_1"),
    "q4_0": ("Q4_0", "MOSTLY_Q4_0"),
}
LOW_BIT = ("q5_1", "q5_0", "q4_1", "q4_0")

ROPE_TYPES = ("default", "linear", "llama3")

# Byte-level BPE pre-tokenizers (tokenizer.json) and the llama.cpp pre-tokenizer name that
# splits text the same way. Regexes of `Split` pre-tokenizers, as their tokenizer.json spell them.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPLIT_PRE = {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2"}


@dataclass
class ExportResult:
    path: Path
    quant: str
    arch: str
    tensors: int
    bytes: int
    chat_template: str | None
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- checks (before any work)


def check_quant(quant: str) -> str:
    name = quant.lower()
    if name not in QUANTS:
        raise UserError(
            f"--quant: {quant!r} is not a type tuner can write; available: {', '.join(QUANTS)}."
            f"{did_you_mean(name, QUANTS)} (K-quants such as q4_k_m: export f16, then run llama.cpp's "
            "llama-quantize on that file)"
        )
    return name


def weights_folder(model_dir: Path) -> tuple[Path, bool]:
    """(the folder whose config.json and tokenizer describe the model, whether it is an adapter)."""
    if not model_dir.is_dir():
        raise UserError(f"--model-dir: {model_dir} does not exist: train first (tuner train) or pass --model-dir")
    if (model_dir / "adapter_config.json").is_file():
        base = Path(json.loads((model_dir / "adapter_config.json").read_text())["base_model_name_or_path"])
        if not (base / "config.json").is_file():
            raise UserError(f"the adapter's base model {base} is not there any more (it is where tuner trained from)")
        return base, True
    if (model_dir / "config.json").is_file():
        return model_dir, False
    raise UserError(f"{model_dir} holds neither an adapter (adapter_config.json) nor a model (config.json): train first")


def family_of(config: Any) -> Family:
    model_type = getattr(config, "model_type", None)
    family = FAMILIES.get(model_type or "")
    if family is None:
        raise UserError(
            f"export-gguf: model_type {model_type!r} ({', '.join(getattr(config, 'architectures', None) or [])}) "
            f"is not one tuner can export to GGUF; supported: {', '.join(FAMILIES)}"
        )
    activation = getattr(config, "hidden_activation", None) or getattr(config, "hidden_act", None)
    if activation != family.activation:
        raise UserError(
            f"export-gguf: this {model_type} model uses the activation {activation!r}; llama.cpp's "
            f"{family.arch.lower()} graph computes {family.activation!r} only"
        )
    rope = rope_parameters(config)
    if rope.get("rope_type", "default") not in ROPE_TYPES:
        raise UserError(
            f"export-gguf: rope_type {rope.get('rope_type')!r} is not exported (supported: {', '.join(ROPE_TYPES)})"
        )
    if not family.has_output and not getattr(config, "tie_word_embeddings", True):
        raise UserError(f"export-gguf: llama.cpp's {family.arch.lower()} graph reuses the embedding as output, "
                        "but this model has its own (tie_word_embeddings: false)")
    if model_type == "qwen2" and getattr(config, "use_sliding_window", False):
        raise UserError("export-gguf: use_sliding_window: true has no equivalent in llama.cpp's qwen2 graph")
    return family


def rope_parameters(config: Any) -> dict[str, Any]:
    """The rotary settings (transformers 5's `rope_parameters`, or the older rope_theta/rope_scaling)."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    if not params:
        params = dict(getattr(config, "rope_scaling", None) or {})
        params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    if "type" in params and "rope_type" not in params:
        params["rope_type"] = params["type"]
    return params


def check_tokenizer(folder: Path) -> str:
    """The llama.cpp pre-tokenizer name for the folder's tokenizer.json, or a UserError."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"export-gguf: {folder} has no tokenizer.json; tuner exports fast (tokenizer.json) tokenizers only")
    spec = json.loads(path.read_text(encoding="utf-8"))
    model = spec.get("model") or {}
    pre = spec.get("pre_tokenizer") or {}
    normalizer = spec.get("normalizer")
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise UserError(
            f"export-gguf: the tokenizer is a {model.get('type')} model"
            f"{' with byte fallback (sentencepiece style)' if model.get('byte_fallback') else ''}; tuner exports "
            "byte-level BPE tokenizers (GPT-2, SmolLM, Llama 3, Qwen2 style) only"
        )
    if normalizer is not None and normalizer.get("type") != "NFC":
        raise UserError(f"export-gguf: the tokenizer normalizes text ({normalizer.get('type')}), which llama.cpp would not")
    name = _pre_tokenizer_name(pre)
    if name is None:
        raise UserError(
            "export-gguf: the tokenizer splits text with a pre-tokenizer that tuner does not know a llama.cpp "
            f"equivalent for: {json.dumps(pre)[:300]} (known: GPT-2's byte-level regex, SmolLM's digits + byte-level, "
            "Llama 3's and Qwen2's split regexes)"
        )
    return name


def _pre_tokenizer_name(pre: dict[str, Any]) -> str | None:
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True) and not steps[0].get("add_prefix_space"):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        regex = (steps[0].get("pattern") or {}).get("Regex")
        if steps[0].get("behavior") == "Isolated" and regex in SPLIT_PRE:
            return SPLIT_PRE[regex]
    return None


def safetensors_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise UserError(f"export-gguf: {folder} has no .safetensors weights (tuner saves safetensors)")
    return files


# --------------------------------------------------------------------------- the tensors


@dataclass
class Plan:
    """Everything decided before a weight is read: names, shapes and types of every tensor."""

    folder: Path
    config: Any
    family: Family
    quant: str
    entries: list[tuple[str, str, tuple[int, ...], str]]  # (HF name, GGUF name, shape, GGML type)
    notes: list[str]


def _tensor_names(folder: Path) -> dict[str, tuple[Path, tuple[int, ...]]]:
    from safetensors import safe_open

    out: dict[str, tuple[Path, tuple[int, ...]]] = {}
    for file in safetensors_files(folder):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                out[name] = (file, tuple(f.get_slice(name).get_shape()))
    return out


def _block_sort_key(gguf_name: str) -> tuple[int, str]:
    m = re.match(r"blk\.(\d+)\.", gguf_name)
    return (int(m.group(1)) if m else -1 if gguf_name.startswith("token_embd") else 1 << 30, gguf_name)


def plan_tensors(folder: Path, config: Any, family: Family, quant: str) -> Plan:
    import gguf

    arch = gguf.MODEL_ARCH[family.arch]
    name_map = gguf.get_tensor_name_map(arch, config.num_hidden_layers)  # this architecture's tensors only
    tied = bool(getattr(config, "tie_word_embeddings", False)) or not family.has_output
    qname = QUANTS[quant][0]
    entries, notes = [], []
    for hf_name, (_, shape) in _tensor_names(folder).items():
        if hf_name.endswith("rotary_emb.inv_freq") or (hf_name == "lm_head.weight" and tied):
            continue
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise UserError(
                f"export-gguf: the weight {hf_name} (shape {list(shape)}) has no place in llama.cpp's "
                f"{family.arch.lower()} architecture"
            )
        if len(shape) == 1 or qname == "F32":
            ggml_type = "F32"
        elif quant in LOW_BIT and gguf_name.split(".")[0] in ("token_embd", "output"):
            ggml_type = "Q8_0"
        else:
            ggml_type = qname
        block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[ggml_type]][0]
        if len(shape) > 1 and shape[-1] % block:
            notes.append(f"{gguf_name}: rows of {shape[-1]} values do not split into blocks of {block}: written as f16")
            ggml_type = "F16"
        entries.append((hf_name, gguf_name, shape, ggml_type))
    rope = rope_parameters(config)
    if rope.get("rope_type") == "llama3":
        entries.append(("", "rope_freqs.weight", (_head_dim(config) // 2,), "F32"))
    entries.sort(key=lambda e: _block_sort_key(e[1]))
    return Plan(folder, config, family, quant, entries, notes)


def _head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def permute_rotary_rows(weight: Any, n_heads: int) -> Any:
    """Reorder the rows of a q or k projection (or its bias) within each head from Hugging
    Face's rotate-half layout, where row j pairs with row j + d/2, to llama.cpp's interleaved
    layout, where row 2i pairs with row 2i + 1: [x0..x_{d/2-1}, y0..y_{d/2-1}] -> [x0, y0, x1, y1, ...]."""
    rest = weight.shape[1:]
    return weight.reshape(n_heads, 2, weight.shape[0] // n_heads // 2, *rest).swapaxes(1, 2).reshape(weight.shape)


def _llama3_rope_factors(config: Any) -> Any:
    """llama.cpp's `rope_freqs`: the divisor of each rotary frequency that Llama 3's scaling
    applies (transformers' own llama3 frequencies against the unscaled ones)."""
    import torch
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    dim = _head_dim(config)
    base = float(rope_parameters(config)["rope_theta"])
    plain = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    return (plain / scaled).float().numpy()


def _converted(plan: Plan, hf_name: str, gguf_name: str, data: Any) -> Any:
    """One weight as float32 numpy, in llama.cpp's layout and convention."""
    config = plan.config
    if gguf_name == "rope_freqs.weight":
        return _llama3_rope_factors(config)
    if plan.family.permute_qk:
        if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            data = permute_rotary_rows(data, config.num_attention_heads)
        elif hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            data = permute_rotary_rows(data, config.num_key_value_heads)
    if plan.family.norm_shift and hf_name.endswith("norm.weight"):
        data = data + plan.family.norm_shift
    return data.float().numpy()


def _encoded(array: Any, ggml_type: str) -> Any:
    import gguf
    import numpy as np

    if ggml_type == "F32":
        return np.ascontiguousarray(array, dtype=np.float32)
    if ggml_type == "F16":
        return np.ascontiguousarray(array, dtype=np.float16)
    return gguf.quants.quantize(np.ascontiguousarray(array, dtype=np.float32), gguf.GGMLQuantizationType[ggml_type])


def _tensor_info(shape: tuple[int, ...], ggml_type: str) -> tuple[tuple[int, ...], Any, int, Any]:
    """(shape as the writer takes it, numpy dtype, bytes, raw GGML type or None)."""
    import gguf
    import numpy as np

    count = 1
    for s in shape:
        count *= s
    if ggml_type == "F32":
        return shape, np.dtype(np.float32), 4 * count, None
    if ggml_type == "F16":
        return shape, np.dtype(np.float16), 2 * count, None
    qtype = gguf.GGMLQuantizationType[ggml_type]
    byte_shape = gguf.quants.quant_shape_to_byte_shape(shape, qtype)
    size = 1
    for s in byte_shape:
        size *= s
    return byte_shape, np.dtype(np.uint8), size, qtype


def _iter_weights(plan: Plan) -> Iterator[tuple[str, str, Any]]:
    from safetensors import safe_open

    index = _tensor_names(plan.folder)
    handles: dict[Path, Any] = {}
    try:
        for hf_name, gguf_name, _, ggml_type in plan.entries:
            if not hf_name:
                yield gguf_name, ggml_type, _converted(plan, hf_name, gguf_name, None)
                continue
            file = index[hf_name][0]
            if file not in handles:
                handles[file] = safe_open(str(file), framework="pt").__enter__()
            yield gguf_name, ggml_type, _converted(plan, hf_name, gguf_name, handles[file].get_tensor(hf_name))
    finally:
        for h in handles.values():
            h.__exit__(None, None, None)


# --------------------------------------------------------------------------- metadata


def _write_hparams(writer: Any, config: Any, family: Family, n_vocab: int, quant: str) -> None:
    import gguf

    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    rope = rope_parameters(config)
    writer.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
    head_dim = _head_dim(config)
    writer.add_rope_dimension_count(head_dim)
    if family.head_dim_keys or head_dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if rope.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(gguf.LlamaFileType[QUANTS[quant][1]])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _write_tokenizer(writer: Any, tokenizer: Any, folder: Path, pre: str, n_vocab: int, template: str | None) -> None:
    import gguf

    vocab = tokenizer.get_vocab()
    if len(vocab) > n_vocab:
        raise UserError(f"export-gguf: the tokenizer has {len(vocab)} tokens but the model only {n_vocab} embeddings")
    by_id = {i: t for t, i in vocab.items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:  # embedding rows beyond the tokenizer (padded vocabularies)
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(
                gguf.TokenType.NORMAL if i not in added
                else gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED
            )
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    merges = gguf.SpecialVocab(folder, load_merges=True, n_vocab=n_vocab).merges  # gguf's reader of tokenizer.json
    if not merges:
        raise UserError(f"export-gguf: {folder / 'tokenizer.json'} lists no BPE merges")
    writer.add_token_merges(merges)
    for kind in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{kind}_token_id")
        if token_id is not None:
            getattr(writer, f"add_{'unk' if kind == 'unk' else kind}_token_id")(token_id)
    writer.add_add_bos_token(adds_special(tokenizer, "bos"))
    writer.add_add_eos_token(adds_special(tokenizer, "eos"))
    if template:
        writer.add_chat_template(template)


def adds_special(tokenizer: Any, kind: str) -> bool:
    """Whether the tokenizer puts its BOS (kind "bos") first or its EOS ("eos") last in what it encodes."""
    token_id = getattr(tokenizer, f"{kind}_token_id")
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    marked = tokenizer("a")["input_ids"]
    end = slice(0, 1) if kind == "bos" else slice(-1, None)
    return token_id is not None and marked[end] == [token_id] != plain[end]


# --------------------------------------------------------------------------- chat template


def _jinja_text(text: str) -> str:
    """`text` as a Jinja string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def alpaca_chat_template(add_bos: bool) -> str:
    """A chat template that renders exactly the Alpaca prompt tuner trains on (training
    tokenizes the prompt, then the answer, then EOS). A system message is the instruction
    and the user message its input; a user message alone is the instruction:

        [system: "Convert the date...", user: "June 3rd, 1999"]  ->  the with-input prompt
        [user: "What is 2+2?"]                                     ->  the without-input prompt
    """
    from tuner.data.formats import alpaca

    def pieces(form: str) -> list[str]:
        return re.split(r"\{(?:instruction|input)\}", form)

    w = pieces(alpaca.WITH_INPUT)  # [head, between, tail]
    n = pieces(alpaca.WITHOUT_INPUT)  # [head, tail]
    return (
        "{%- set ns = namespace(instruction=none) -%}"
        + ("{{- bos_token -}}" if add_bos else "")
        + "{%- for message in messages -%}"
        "{%- if message['role'] == 'system' -%}{%- set ns.instruction = message['content'] -%}"
        "{%- elif message['role'] == 'user' -%}"
        "{%- if ns.instruction is not none and message['content'] -%}"
        f"{{{{- {_jinja_text(w[0])} + ns.instruction + {_jinja_text(w[1])} + message['content'] + {_jinja_text(w[2])} -}}}}"
        "{%- else -%}"
        "{%- set instruction = ns.instruction if ns.instruction is not none else message['content'] -%}"
        f"{{{{- {_jinja_text(n[0])} + instruction + {_jinja_text(n[1])} -}}}}"
        "{%- endif -%}"
        "{%- elif message['role'] == 'assistant' -%}{{- message['content'] + eos_token -}}"
        "{%- endif -%}"
        "{%- endfor -%}"
    )


def training_chat_template(cfg: Any, folder: Path) -> tuple[str | None, str]:
    """(the chat template to embed, a sentence saying which and why), from the config that trained it.

    Chat data trained through the tokenizer's template (tuner saves the one that trained with
    the tokenizer): that template. Alpaca data trained on the Alpaca prompt: a template that
    renders it (`alpaca_chat_template`). Other formats have no chat form: the tokenizer's own
    template, if any, is kept, and the sentence says it did not train the model."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    kinds = sorted({ds.kind for ds in cfg.data.datasets})
    if kinds == ["chat_template"]:
        return tokenizer.chat_template, "the chat template that trained the model (saved with its tokenizer)"
    if kinds == ["alpaca"]:
        return alpaca_chat_template(adds_special(tokenizer, "bos")), (
            "an Alpaca chat template (system message = instruction, user message = input), the prompt format "
            "the model trained on"
        )
    note = (
        f"the tokenizer's own chat template; note the model trained on {', '.join(kinds)} rows, not through it"
        if tokenizer.chat_template else "no chat template (the tokenizer has none)"
    )
    return tokenizer.chat_template, note


# --------------------------------------------------------------------------- export


def check(model_dir: Path, quant: str) -> tuple[Path, bool, Any, Family, str, str]:
    """Every refusal that needs no weights: (config folder, is adapter, config, family, quant, pre-tokenizer)."""
    from transformers import AutoConfig

    quant = check_quant(quant)
    folder, is_adapter = weights_folder(model_dir)
    config = AutoConfig.from_pretrained(str(folder))
    family = family_of(config)
    pre = check_tokenizer(model_dir if (model_dir / "tokenizer.json").is_file() else folder)
    safetensors_files(folder)
    return folder, is_adapter, config, family, quant, pre


def export(model_dir: Path, output: Path, quant: str = "f16", chat_template: str | None = None) -> ExportResult:
    """Write `model_dir` (an adapter output folder, merged first, or a full model folder) to the
    GGUF file `output`, atomically. `chat_template`: the template to embed (None: the tokenizer's;
    "": none)."""
    from tuner.export.merge import merge

    _, is_adapter, config, family, quant, pre = check(model_dir, quant)
    output.parent.mkdir(parents=True, exist_ok=True)
    if not is_adapter:
        return _write(model_dir, output, config, family, quant, pre, chat_template)
    with tempfile.TemporaryDirectory(prefix=".merge-", dir=output.parent) as tmp:
        log.info("merging the adapter in %s into its base (float32) for the export", model_dir)
        merged = merge(model_dir, Path(tmp) / "merged", "float32")
        from transformers import AutoConfig

        return _write(merged, output, AutoConfig.from_pretrained(str(merged)), family, quant, pre, chat_template)


def _write(folder: Path, output: Path, config: Any, family: Family, quant: str, pre: str,
           chat_template: str | None) -> ExportResult:
    import gguf
    from transformers import AutoTokenizer

    plan = plan_tensors(folder, config, family, quant)
    for note in plan.notes:
        log.info("export-gguf: %s", note)
    n_vocab = next(shape[0] for _, name, shape, _ in plan.entries if name == "token_embd.weight")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    template = (chat_template if chat_template is not None else tokenizer.chat_template) or None  # "": none
    window = getattr(config, "sliding_window", None) if config.model_type == "mistral" else None
    if window and window < config.max_position_embeddings:
        plan.notes.append(
            f"sliding_window {window}: llama.cpp runs Mistral as Llama with full attention, the same "
            f"as this model for contexts up to {window} tokens"
        )
        log.info("export-gguf: %s", plan.notes[-1])

    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[family.arch]])
    try:
        writer.add_type("model")
        writer.add_name(output.stem)
        _write_hparams(writer, config, family, n_vocab, quant)
        _write_tokenizer(writer, tokenizer, folder, pre, n_vocab, template)
        total = 0
        for _, gguf_name, shape, ggml_type in plan.entries:
            shape_w, dtype, nbytes, raw = _tensor_info(shape, ggml_type)
            writer.add_tensor_info(gguf_name, shape_w, dtype, nbytes, raw_dtype=raw)
            total += nbytes
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for gguf_name, ggml_type, array in _iter_weights(plan):
            writer.write_tensor_data(_encoded(array, ggml_type))
        writer.close()
        os.replace(tmp, output)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return ExportResult(output, quant, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[family.arch]], len(plan.entries), total,
                        template, plan.notes)


def export_trained(cfg: Any, model_dir: Path, output: Path, quant: str) -> ExportResult:
    """`tuner export-gguf`: the refusals first, then the chat template the config trained
    with (`training_chat_template`), then the export."""
    if output.suffix != ".gguf":
        raise UserError(f"--output: {output} should end in .gguf (llama.cpp and tuner's base_model go by it)")
    folder, *_ = check(model_dir, quant)
    template, why = training_chat_template(cfg, model_dir if (model_dir / "tokenizer.json").is_file() else folder)
    log.info("export-gguf: chat template: %s", why)
    result = export(model_dir, output, quant, template or "")
    result.notes.insert(0, f"chat template: {why}")
    if (output.parent / "adapter_config.json").is_file():
        result.notes.append(
            "the file sits beside adapter_config.json: llama.cpp reads it, but transformers' from_pretrained(folder, "
            "gguf_file=...) and so tuner's base_model would load the adapter's base instead; move it to use it there"
        )
    return result


def llama_cpp_command(path: Path, system: str | None = None) -> str:
    """The llama.cpp command line that chats with the exported file."""
    import shlex

    cmd = ["llama-cli", "-m", str(path), "--jinja"]
    if system:
        cmd += ["-sys", system]
    return " ".join(shlex.quote(c) for c in cmd)
