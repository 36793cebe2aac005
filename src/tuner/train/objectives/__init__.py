"""Training objectives by name. A new objective is one module here plus an entry in
OBJECTIVES (see base.py for what it declares)."""

from __future__ import annotations

from typing import Any, Callable

from tuner.config.schema import TunerConfig
from tuner.train.objectives.base import Objective
from tuner.train.objectives.classification import Classification
from tuner.train.objectives.grpo import GRPO
from tuner.train.objectives.preference import KTO, PairPreference
from tuner.train.objectives.reward import BradleyTerry
from tuner.train.objectives.sft import SFT

# TunerConfig.objective -> the objective, built from the config (classification: and its training rows)
OBJECTIVES: dict[str, Callable[..., Any]] = {
    "sft": lambda cfg: SFT(),
    "dpo": PairPreference,
    "ipo": PairPreference,
    "simpo": PairPreference,
    "orpo": PairPreference,
    "kto": KTO,
    "reward": BradleyTerry,
    "classification": Classification.for_data,
    "grpo": GRPO,
}


def objective_for(cfg: TunerConfig, train_rows: Any = None, checkpoint_labels: dict[int, str] | None = None) -> Objective:
    """The objective a config trains with. Classification needs the prepared training rows (its
    classes may come from them) and a classifier checkpoint's own labels, if any."""
    name = cfg.objective
    if name == "classification":
        return OBJECTIVES[name](cfg, train_rows, checkpoint_labels)
    return OBJECTIVES[name](cfg)
