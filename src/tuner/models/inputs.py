"""What every command that reads a config needs before data or weights: the base model as a
plain HF folder, its tokenizer (with the tokens the config adds) and the files that decide
tokenization. `load_inputs` is the one way to get them, so `preprocess`, `train`, `info`,
`inspect` and `generate` all refuse the same configs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.config.schema import TunerConfig
from tuner.models.adapter import check_added_tokens
from tuner.models.load import BaseModelSource, load_tokenizer_and_new_ids, resolve_base, tokenizer_files


@dataclass(frozen=True)
class Inputs:
    base: BaseModelSource
    tokenizer: Any  # a transformers tokenizer, with pad token set and configured tokens added
    new_token_ids: list[int]  # ids of the tokens `special_tokens` / `tokens` added
    tokenizer_files: list[Path]  # hashed into the prepared data's fingerprint


def load_inputs(cfg: TunerConfig, weights: bool = True, read_config: bool = True) -> Inputs:
    """`weights=False`: a hub model's weight files are not fetched (for `tuner info`).
    `read_config=False`: the model's config is not read (transformers' config classes import torch);
    for `tuner preprocess`, whose data stage needs the tokenizer only."""
    base = resolve_base(cfg.model, weights, read_config)
    tokenizer, new_ids = load_tokenizer_and_new_ids(cfg.model, base)
    check_added_tokens(cfg.adapter, new_ids)
    return Inputs(base, tokenizer, new_ids, tokenizer_files(cfg.model, base))
