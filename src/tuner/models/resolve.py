"""Model and tokenizer classes by name, from transformers.

Names are checked against transformers' lazy module listing (`dir(transformers)`), which
does not import torch, so `tuner validate` catches a misspelled class name cheaply.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from tuner.config.schema import ModelBlock, Problem, is_sequence_classifier
from tuner.errors import UserError, did_you_mean

AUTO_MODEL = "AutoModelForCausalLM"
AUTO_TOKENIZER = "AutoTokenizer"
TOKENIZER_SUFFIXES = ("Tokenizer", "TokenizerFast", "TokenizersBackend", "PythonBackend")


@lru_cache(maxsize=1)
def _transformers_names() -> frozenset[str]:
    import transformers

    # What dir(transformers) lists, without its quadratic list-membership loop (0.3 s):
    # the lazy module's exported names plus what has been imported already. No torch import.
    names = set(getattr(transformers, "__all__", ())) | set(vars(transformers))
    return frozenset(n for n in names if not n.startswith("_"))


def _is_causal_lm(name: str) -> bool:
    return name == AUTO_MODEL or name.endswith("ForCausalLM")


def _is_head(name: str) -> bool:
    """A head tuner trains: a causal LM, or a sequence classifier (reward models, classification)."""
    return _is_causal_lm(name) or is_sequence_classifier(name)


def _is_tokenizer(name: str) -> bool:
    return name == AUTO_TOKENIZER or name.endswith(TOKENIZER_SUFFIXES)


def model_class_problem(name: str) -> str | None:
    """Why `name` is not a usable model class (a causal LM or a sequence classifier), or None
    when it is. Whether the head fits the objective is schema._head_problems'."""
    names = _transformers_names()
    candidates = sorted(n for n in names if _is_head(n))
    if name not in names:
        return f"{name!r} is not a transformers class.{did_you_mean(name, candidates)}"
    if not _is_head(name):
        return (
            f"{name!r} is a transformers class but not a causal language model nor a sequence classifier "
            f"({'AutoModel is the backbone alone, ' if name == 'AutoModel' or name.endswith('Model') else ''}"
            f"AutoModelForXXX is backbone + head). Supported: {AUTO_MODEL} or a *ForCausalLM class (e.g. "
            f"LlamaForCausalLM, Qwen2ForCausalLM); for reward_model or classification "
            f"AutoModelForSequenceClassification or a *ForSequenceClassification class.{did_you_mean(name, candidates)}"
        )
    return None


def tokenizer_class_problem(name: str) -> str | None:
    names = _transformers_names()
    candidates = sorted(n for n in names if _is_tokenizer(n))
    if name not in names:
        return f"{name!r} is not a transformers class.{did_you_mean(name, candidates)}"
    if not _is_tokenizer(name):
        return f"{name!r} is a transformers class but not a tokenizer. Supported: {AUTO_TOKENIZER} or a *Tokenizer class."
    return None


def class_name_problems(model_type: object, tokenizer_type: object) -> list[Problem]:
    """Problems with the class names in a config (non-strings are left to the schema)."""
    problems = []
    if isinstance(model_type, str) and (why := model_class_problem(model_type)):
        problems.append(Problem(("model_type",), why))
    if isinstance(tokenizer_type, str) and (why := tokenizer_class_problem(tokenizer_type)):
        problems.append(Problem(("tokenizer_type",), why))
    return problems


def get_class(name: str) -> Any:
    import transformers

    return getattr(transformers, name)


def model_class(model: ModelBlock, name: str | None = None) -> Any:
    """The class `name` (default: model_type, else AutoModelForCausalLM)."""
    name = name or model.model_type or AUTO_MODEL
    if why := model_class_problem(name):
        raise UserError(f"model_type: {why}")
    return get_class(name)


def tokenizer_class(model: ModelBlock) -> Any:
    name = model.tokenizer_type or AUTO_TOKENIZER
    if why := tokenizer_class_problem(name):
        raise UserError(f"tokenizer_type: {why}")
    return get_class(name)
