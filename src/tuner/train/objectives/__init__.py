"""Training objectives by name. A new objective is one module here plus an entry in
OBJECTIVES (see base.py for what it declares)."""

from __future__ import annotations

from tuner.config.schema import TunerConfig
from tuner.train.objectives.base import Objective
from tuner.train.objectives.sft import SFT

OBJECTIVES: dict[str, type] = {"sft": SFT}


def objective_for(cfg: TunerConfig) -> Objective:
    """The objective a config trains with (supervised fine-tuning unless it says otherwise)."""
    return OBJECTIVES["sft"]()
