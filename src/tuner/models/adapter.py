"""Which weights train: LoRA / QLoRA adapters through peft's public API, or full
fine-tuning of all (or `unfrozen_parameters`) weights.

Added tokens with an adapter: their embedding rows must train, or the model could never
use them. Two ways, both peft's own: `peft_trainable_token_indices` (only the new rows
train and are saved; with tied input/output embeddings peft keeps both sides tied) or
`lora_modules_to_save: [embed_tokens, lm_head]` (whole matrices; tied with
`ensure_weight_tying`). A config that adds tokens without either is refused.
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tuner.config.schema import AdapterBlock
from tuner.errors import UserError

EMBEDDING_NAMES = {"embed_tokens", "wte", "word_embeddings", "embed_in", "tok_embeddings"}


@contextmanager
def without_bitsandbytes(quantized: bool) -> Iterator[None]:
    """Within: bitsandbytes looks uninstalled, unless the run quantizes or it is imported already.

    peft imports bitsandbytes whenever it is installed: `peft.helpers` when peft is imported,
    and LoRA's layer dispatch in get_peft_model / PeftModel.from_pretrained (peft 0.17-0.21),
    also for a base with no quantized layer. Importing bitsandbytes compiles its kernels with
    torch.compile (importing torch's compiler stack: seconds of start-up and tens of MB) and,
    on CPUs with AVX512-BF16, warns that it cannot fetch an optional hub kernel. Python's own
    import blocker (`sys.modules[name] = None`: `import` raises ImportError, `find_spec` finds
    nothing) keeps it out for the adapter's creation; nothing of peft is changed. Afterwards
    it is importable as before (a bitsandbytes optimizer, or a quantized model later in the
    same process), and peft's cached "is bitsandbytes available" answers are dropped so that
    peft asks again."""
    if quantized or "bitsandbytes" in sys.modules:
        yield
        return
    sys.modules["bitsandbytes"] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if "bitsandbytes" in sys.modules and sys.modules["bitsandbytes"] is None:
            del sys.modules["bitsandbytes"]
        utils = sys.modules.get("peft.import_utils")
        for name in ("is_bnb_available", "is_bnb_4bit_available"):
            getattr(getattr(utils, name, None), "cache_clear", lambda: None)()


@contextmanager
def peft_calls(quantized: bool) -> Iterator[None]:
    """Around tuner's calls into peft: no bitsandbytes unless the run quantizes
    (`without_bitsandbytes`), and without the FutureWarning peft sets off by reading
    transformers' deprecated `is_gradient_checkpointing` in PeftModel's constructor (peft 0.21
    with transformers 5.2x): nothing a user can change, so it is not shown."""
    with without_bitsandbytes(quantized), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def lora_config(a: AdapterBlock, tied: bool) -> Any:
    with without_bitsandbytes(a.load_in_4bit or a.load_in_8bit):
        from peft import LoraConfig

    targets: Any = a.lora_target_modules
    if a.lora_target_linear:
        targets = "all-linear" if not a.lora_target_modules else a.lora_target_modules  # peft's: all but the head
    if targets is None and a.lora_target_parameters:
        targets = []  # parameters only: no module, not peft's per-architecture default modules
    extra_training = bool(a.lora_modules_to_save or a.peft_trainable_token_indices)
    return LoraConfig(
        r=a.lora_r,
        lora_alpha=a.lora_alpha,
        lora_dropout=a.lora_dropout,
        target_modules=targets,
        modules_to_save=a.lora_modules_to_save,
        trainable_token_indices=a.peft_trainable_token_indices,
        target_parameters=a.lora_target_parameters,
        use_dora=a.peft_use_dora,
        use_rslora=a.peft_use_rslora,
        ensure_weight_tying=tied and extra_training,
        bias="none",
        task_type="CAUSAL_LM",
    )


def check_added_tokens(a: AdapterBlock, added_ids: list[int]) -> None:
    """Refuse an adapter config under which added tokens' embeddings would never train."""
    if not a.adapter or not added_ids or a.lora_model_dir:
        return
    saved = set(a.lora_modules_to_save or [])
    if saved & EMBEDDING_NAMES:
        return
    indices = a.peft_trainable_token_indices
    covered = set(indices) if isinstance(indices, list) else {i for ids in (indices or {}).values() for i in ids}
    missing = [i for i in added_ids if i not in covered]
    if missing:
        raise UserError(
            f"special_tokens/tokens add {len(added_ids)} new token(s) (ids {added_ids[:10]}), but with an adapter "
            f"their embeddings would not train. Add `peft_trainable_token_indices: {added_ids}` (only the new rows "
            "train) or `lora_modules_to_save: [embed_tokens, lm_head]` (the whole matrices train)."
        )


def apply_adapter(model: Any, a: AdapterBlock, gradient_checkpointing: bool,
                  checkpointing_kwargs: dict[str, Any] | None = None) -> Any:
    """The model with its trainable weights set up; a PeftModel when there is an adapter.

    `unfrozen_parameters` with an adapter (as Axolotl): after the adapter is applied, every
    parameter of the adapted model whose name matches none of the patterns is frozen, LoRA
    weights included, and the matching ones train."""
    if a.adapter is None:
        if a.unfrozen_parameters:
            freeze_except(model, a.unfrozen_parameters)
        return model
    adapted = _adapted(model, a, gradient_checkpointing, checkpointing_kwargs or {"use_reentrant": False})
    if a.unfrozen_parameters:
        freeze_except(adapted, a.unfrozen_parameters)
        lost = [n for n, p in adapted.named_parameters() if p.requires_grad and not _saved_with_adapter(n)]
        if lost:
            raise UserError(
                f"unfrozen_parameters: {a.unfrozen_parameters} with adapter: {a.adapter} would train {len(lost)} base "
                f"parameter(s) (e.g. {lost[0]}) that an adapter does not save, so their training would be lost. "
                "List those modules in lora_modules_to_save (they then train in full and are saved with the "
                "adapter), restrict the patterns to the adapter's weights (e.g. 'lora_'), or train without an adapter."
            )
    return adapted


def _saved_with_adapter(name: str) -> bool:
    """Whether peft's save_pretrained writes this parameter of a PeftModel."""
    return any(part in name for part in ("lora_", "modules_to_save", "trainable_tokens"))


def _adapted(model: Any, a: AdapterBlock, gradient_checkpointing: bool, checkpointing_kwargs: dict[str, Any]) -> Any:
    quantized = a.load_in_4bit or a.load_in_8bit or bool(getattr(model, "is_quantized", False))
    with peft_calls(quantized):
        return _peft_model(model, a, gradient_checkpointing, checkpointing_kwargs)


def _peft_model(model: Any, a: AdapterBlock, gradient_checkpointing: bool, checkpointing_kwargs: dict[str, Any]) -> Any:
    from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training

    if a.load_in_4bit or a.load_in_8bit:
        # peft's k-bit preparation: norms in fp32, input gradients for checkpointing.
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gradient_checkpointing, gradient_checkpointing_kwargs=checkpointing_kwargs,
        )
    if a.lora_model_dir:
        try:
            return PeftModel.from_pretrained(model, a.lora_model_dir, is_trainable=True)
        except (OSError, ValueError) as err:
            raise UserError(f"lora_model_dir: cannot load an adapter from {a.lora_model_dir}: {err}") from None
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    config = lora_config(a, tied)
    if classifier_head(model):  # reward models, classification: the new head trains in full and is saved
        config.task_type = "SEQ_CLS"
        config.modules_to_save = sorted({*(config.modules_to_save or []), "score"})
    if a.lora_target_linear and a.lora_target_modules:
        # Both given: all linear layers, plus the named ones.
        named = [a.lora_target_modules] if isinstance(a.lora_target_modules, str) else list(a.lora_target_modules)
        config.target_modules = sorted(_linear_names(model) | set(named))
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        if a.lora_target_parameters and "target_parameters" in str(err):
            shaped = sorted({re.sub(r"\.\d+\.", ".N.", n) for n, p in model.named_parameters() if p.dim() == 3})
            raise UserError(
                f"lora_target_parameters: {a.lora_target_parameters} match no parameter of this model (names are "
                f"matched whole or as a suffix after a dot). Its 3-D parameters (MoE experts): "
                f"{', '.join(shaped[:8]) or 'none'}"
            ) from None
        present = ", ".join(sorted(_linear_names(model)))
        raise UserError(
            f"lora_target_modules: {a.lora_target_modules!r} matches no module of this model "
            f"({str(err).splitlines()[0][:200]}). Linear layers here: {present}"
        ) from None


def classifier_head(model: Any) -> bool:
    """Whether the model is a sequence classifier whose linear `score` head an adapter must save."""
    return type(model).__name__.endswith("ForSequenceClassification") and hasattr(model, "score")


def freeze_except(model: Any, patterns: list[str]) -> None:
    compiled = []
    for p in patterns:
        try:
            compiled.append(re.compile(p))
        except re.error as err:
            raise UserError(f"unfrozen_parameters: {p!r} is not a valid regular expression: {err}") from None
    matched = 0
    for name, param in model.named_parameters():
        # only floating-point weights can train (a 4-/8-bit base's packed weights cannot)
        param.requires_grad = param.is_floating_point() and any(c.search(name) for c in compiled)
        matched += param.requires_grad
    if not matched:
        sample = ", ".join(n for n, _ in list(model.named_parameters())[:4])
        raise UserError(f"unfrozen_parameters: {patterns} match no parameter (names look like: {sample}, ...)")


def _linear_names(model: Any) -> set[str]:
    import torch

    head = model.get_output_embeddings()
    return {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not head
    }
