"""Training objectives by name. A new objective is one module here plus an entry in
OBJECTIVES (see base.py for what it declares)."""

from __future__ import annotations

from typing import Any, Callable

from tuner.config.schema import TunerConfig
from tuner.train.objectives.base import Objective
from tuner.train.objectives.preference import KTO, PairPreference
from tuner.train.objectives.sft import SFT

# `rl:` (None: supervised fine-tuning) -> the objective, built from the config
OBJECTIVES: dict[str | None, Callable[[TunerConfig], Any]] = {
    None: lambda cfg: SFT(),
    "dpo": PairPreference,
    "ipo": PairPreference,
    "simpo": PairPreference,
    "orpo": PairPreference,
    "kto": KTO,
}


def objective_for(cfg: TunerConfig) -> Objective:
    """The objective a config trains with (supervised fine-tuning unless `rl:` says otherwise)."""
    return OBJECTIVES[cfg.preference.rl](cfg)
