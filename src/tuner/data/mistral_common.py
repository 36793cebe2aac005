"""Mistral's own tokenizer: `tokenizer_use_mistral_common: true` (as Axolotl's Mistral examples set).

The model's tokenizer file (`tekken.json`, or a sentencepiece `tokenizer.model.vN`, chosen as
mistral-common chooses) is loaded through transformers' `MistralCommonBackend`, which wraps
mistral-common's `MistralTokenizer`. It is loaded in mistral-common's `test` mode, so a plain
encode with special tokens adds BOS only: alpaca, completion and the other text types encode
their pieces through it exactly as they do through a Hugging Face tokenizer (EOS appended by
tuner.data.tokenize).

Conversations (`type: chat_template`) are not rendered with a Jinja template: mistral-common
builds the tokens itself (`encode_chat_completion` of a `ChatCompletionRequest`), in its
`finetuning` mode (the conversation ends with an assistant turn). Which tokens belong to which
message is found without looking inside the encoder:

  * the whole conversation is encoded once: `ids`;
  * the end of message k is the length of the encoding of the conversation up to and including
    message k (in mistral-common's `agnostic` mode, which accepts any last role), taken only when
    that encoding is a prefix of `ids`. Tokenizers v1-v3 fold the system prompt into the first
    (v1) or last (v2, v3) user message, so for earlier turns the prefix is also tried without
    the system message; when neither is a prefix of `ids` the row is refused, naming the message;
  * message k's tokens are those between the end of message k-1 and its own end. An assistant
    message's tokens are its content (and reasoning) and the EOS that mistral-common ends every
    assistant turn with.

Labels: a trained message's tokens keep their ids, all else (BOS, [INST], user text, [/INST],
...) is -100. The EOS closing an assistant turn follows `train_on_eos` (turn: of trained turns,
all, last, none), as Axolotl's MistralStrategy (whose end-of-turn token is the EOS).

mistral-common is an optional dependency (`pip install 'tuner[mistral]'`): it pins numpy below
2.4 on Python <= 3.12, so it is not forced on every install.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from tuner.config.compat import MISTRAL_INSTALL as INSTALL
from tuner.data.labels import IGNORE
from tuner.errors import UserError

KEY = "tokenizer_use_mistral_common"
ROLES = ("system", "user", "assistant")


def available() -> bool:
    """Whether mistral-common is installed (looked up without importing it)."""
    return importlib.util.find_spec("mistral_common") is not None


def require() -> None:
    if not available():
        raise UserError(f"{KEY}: true needs the mistral-common package, which is not installed; install it with: "
                        f"{INSTALL}  (or pip install 'mistral-common[sentencepiece]')")


def tokenizer_file(path: Path) -> Path:
    """The mistral-common tokenizer file of a model folder (tekken.json wins, as in mistral-common), or
    `path` itself when it is a file. Raises UserError."""
    if path.is_file():
        return path
    from mistral_common.tokens.tokenizers.utils import get_one_valid_tokenizer_file

    names = sorted(p.name for p in path.iterdir() if p.is_file())
    try:
        return path / get_one_valid_tokenizer_file(names)
    except ValueError:
        raise UserError(
            f"{KEY}: {path} has no mistral-common tokenizer file (tekken.json or tokenizer.model.v1/v2/v3/v7/...; "
            f"it has: {', '.join(names[:15]) or 'nothing'}); point tokenizer_config at the model's tekken.json, or set "
            f"{KEY}: false to use its Hugging Face tokenizer"
        ) from None


def load(path: Path) -> Any:
    """transformers' MistralCommonBackend for the tokenizer file of `path` (a folder or the file)."""
    require()
    file = tokenizer_file(path)
    from transformers.tokenization_mistral_common import MistralCommonBackend

    try:
        return MistralCommonBackend(tokenizer_path=str(file), mode="test")
    except Exception as err:  # noqa: BLE001 - mistral-common raises several kinds for a bad file
        raise UserError(f"{KEY}: mistral-common cannot load {file}: {type(err).__name__}: {err}") from None


def is_mistral(tokenizer: Any) -> bool:
    """Whether `tokenizer` is mistral-common's (transformers' MistralCommonBackend)."""
    return getattr(tokenizer, "backend", None) == "mistral_common" or type(tokenizer).__name__ == "MistralCommonBackend"


@dataclass(frozen=True)
class Turn:
    """One message of a conversation, as the chat format read it."""

    role: str  # system | user | assistant
    content: str
    thinking: str | None  # an assistant's reasoning (a thinking chunk, for tokenizers that have them)
    trained: bool
    where: str  # the row field, for errors: messages[2]


class TurnError(ValueError):
    """A conversation mistral-common cannot encode, or whose turns cannot be located. `where` names
    the message (or the row's messages field)."""

    def __init__(self, where: str | None, problem: str):
        super().__init__(problem)
        self.where = where


@lru_cache(maxsize=8)
def _encoders(tokenizer: Any) -> tuple[Any, Any]:
    """mistral-common's encoder of `tokenizer` in finetuning mode (whole conversations) and in
    agnostic mode (conversations cut after any message), sharing its instruct tokenizer."""
    from mistral_common.protocol.instruct.normalize import get_normalizer
    from mistral_common.protocol.instruct.validator import ValidationMode, get_validator
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    inner = tokenizer.tokenizer.instruct_tokenizer
    version = inner.tokenizer.version

    def make(mode: Any) -> Any:
        normalizer = get_normalizer(version, getattr(inner.tokenizer, "model_settings_builder", None))
        return MistralTokenizer(inner, validator=get_validator(version, mode=mode), request_normalizer=normalizer)

    return make(ValidationMode.finetuning), make(ValidationMode.agnostic)


def _message(turn: Turn) -> dict[str, Any]:
    if turn.thinking is None:
        return {"role": turn.role, "content": turn.content}
    chunks: list[dict[str, str]] = [{"type": "thinking", "thinking": turn.thinking}]
    if turn.content:
        chunks.append({"type": "text", "text": turn.content})
    return {"role": turn.role, "content": chunks}


def _encode(encoder: Any, turns: list[Turn]) -> list[int]:
    from mistral_common.protocol.instruct.request import ChatCompletionRequest

    request = ChatCompletionRequest.from_openai(messages=[_message(t) for t in turns])
    return list(encoder.encode_chat_completion(request).tokens)


def _problem(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return f"mistral-common cannot encode it: {text[:300]}"


def version(tokenizer: Any) -> str:
    return str(tokenizer.tokenizer.instruct_tokenizer.tokenizer.version.value)


def encode_chat(tokenizer: Any, turns: list[Turn], eos_option: str, train_on_inputs: bool) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one conversation, encoded by mistral-common. Raises TurnError."""
    for t in turns:
        if t.role not in ROLES:
            raise TurnError(t.where, f"has role {t.role!r}; with {KEY} tuner encodes system, user and assistant "
                                     "messages (tool messages are not supported yet)")
    full_encoder, cut_encoder = _encoders(tokenizer)
    try:
        ids = _encode(full_encoder, turns)
    except Exception as err:  # noqa: BLE001 - mistral-common raises its own exception kinds and pydantic's
        raise TurnError(None, _problem(err)) from None
    if train_on_inputs:
        return ids, list(ids)

    bos = len(full_encoder.instruct_tokenizer.start())
    ends: dict[int, int] = {-1: bos}

    def end(k: int) -> int:
        """Where message k's tokens end in `ids` (see the module docstring)."""
        if k not in ends:
            head = turns[: k + 1]
            candidates = [head] + ([[t for t in head if t.role != "system"]] if any(t.role == "system" for t in head[:-1]) else [])
            for candidate in candidates:
                try:
                    prefix = _encode(cut_encoder, candidate)
                except Exception:  # noqa: BLE001,S112 - a cut mistral-common refuses: try the next form
                    continue
                if ids[: len(prefix)] == prefix:
                    ends[k] = len(prefix)
                    break
            else:
                raise TurnError(turns[k].where, f"({turns[k].role}) cannot be located in mistral-common's encoding of the "
                                                f"conversation: the encoding up to this message is not where the whole "
                                                f"conversation's begins (tokenizer {version(tokenizer)})")
        return ends[k]

    labels = [IGNORE] * len(ids)
    eos = full_encoder.instruct_tokenizer.tokenizer.eos_id
    assistants = [k for k, t in enumerate(turns) if t.role == "assistant"]
    trained_assistants = [k for k in assistants if turns[k].trained]
    eos_trained = set({"all": assistants, "last": trained_assistants[-1:], "turn": trained_assistants,
                       "none": []}[eos_option])
    for k, t in enumerate(turns):
        if not t.trained and k not in eos_trained:
            continue
        start, stop = end(k - 1), end(k)
        if stop < start or (t.role == "assistant" and (stop == start or ids[stop - 1] != eos)):
            raise TurnError(t.where, f"({t.role}) cannot be located in mistral-common's encoding of the conversation "
                                     f"(tokens {start}..{stop} do not end with its EOS)")
        if t.trained:
            labels[start:stop] = ids[start:stop]
        if t.role == "assistant":
            labels[stop - 1] = eos if k in eos_trained else IGNORE
    return ids, labels
