"""Chat templates: the tokenizer's own, a named one tuner ships, or one given in the config.

Named templates (`chat_template: gemma3`, ...) are Jinja files in `tuner/data/chat_templates/`,
one per name in tuner.config.dataset_types.NAMED_TEMPLATES (a few names share a file), each
rendering text conversations as Axolotl's template of that name does: tests/unit/
test_axolotl_parity.py holds them to renderings real Axolotl produced, and tests/unit/test_chat.py
checks that each trains exactly the answers and their end-of-turn tokens.

A dataset may name its own template (`datasets[i].chat_template`, as Axolotl allows);
the others use the top-level one. The top-level template (or, when every chat dataset has
its own, the first of those) is returned with the prepared data, and the training loop sets
it on the tokenizer it saves, so the saved tokenizer carries the template that trained the
model.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from tuner.config.dataset_types import FALLBACK_PREFIX, NAMED_TEMPLATES, TEMPLATE_ALIASES
from tuner.config.schema import DataBlock, DatasetConfig
from tuner.data import mistral_common
from tuner.data.formats import get_format
from tuner.errors import UserError


@lru_cache(maxsize=None)
def named(name: str) -> str:
    """The text of a template tuner ships."""
    if name not in NAMED_TEMPLATES:
        raise KeyError(name)
    file = TEMPLATE_ALIASES.get(name, name)
    return (resources.files("tuner.data") / "chat_templates" / f"{file}.jinja").read_text(encoding="utf-8")


CHATML = named("chatml")
LLAMA3 = named("llama3")


def uses_chat(data: DataBlock) -> bool:
    """Whether any dataset (train or test) is rendered by a chat template."""
    return any(get_format(ds).chat for ds in _entries(data))


def _entries(data: DataBlock) -> list[DatasetConfig]:
    return [*data.datasets, *(data.test_datasets or [])]


def _jinja(text: str, key: str) -> str:
    """`chat_template_jinja`: the template itself, or (as Axolotl allows) a path to a file holding it."""
    if "\n" not in text and "{" not in text and len(text) < 4096:
        path = Path(text).expanduser()
        if path.is_file():
            return path.read_text(encoding="utf-8")
        raise UserError(f"{key}: {text!r} is neither a Jinja template nor an existing file")
    return text


def _own(tokenizer: Any) -> str | None:
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, dict):  # several named templates: the default one
        own = own.get("default") or next(iter(own.values()), None)
    return own or None


def by_name(name: str, tokenizer: Any, key: str) -> str:
    """The template a `chat_template` value names (not jinja)."""
    if name.startswith(FALLBACK_PREFIX):
        return _own(tokenizer) or named(name[len(FALLBACK_PREFIX):])
    if name == "tokenizer_default":
        own = _own(tokenizer)
        if own is None:
            raise UserError(
                f"{key}: the tokenizer has no chat template of its own; set `chat_template: chatml` (or another "
                "name tuner ships: llama3, gemma3, qwen3, ...), or give one in chat_template_jinja"
            )
        return own
    return named(name)


def for_dataset(ds: DatasetConfig, default: str | None, tokenizer: Any) -> str | None:
    """The template a dataset's rows are rendered with: its own, else the top-level one."""
    if ds.chat_template_jinja:
        return _jinja(ds.chat_template_jinja, "datasets.chat_template_jinja")
    if ds.chat_template:
        return by_name(ds.chat_template, tokenizer, "datasets.chat_template")
    return default


def resolve(data: DataBlock, tokenizer: Any) -> str | None:
    """The top-level template text (None when no dataset needs one and none is set, and with
    mistral-common's tokenizer, which encodes conversations itself)."""
    if mistral_common.is_mistral(tokenizer):
        return None
    chats = [ds for ds in _entries(data) if get_format(ds).chat]
    needed = any(not ds.chat_template and not ds.chat_template_jinja for ds in chats)
    if data.chat_template_jinja:
        return _jinja(data.chat_template_jinja, "chat_template_jinja")
    name = data.chat_template
    if name is not None and name != "jinja" and (name != "tokenizer_default" or needed):
        return by_name(name, tokenizer, "chat_template")
    if needed:
        return by_name("tokenizer_default", tokenizer, "chat_template")
    if name == "tokenizer_default":
        return _own(tokenizer)
    return for_dataset(chats[0], None, tokenizer) if chats else None
