"""`tuner info`: model facts, parameter counts and the memory plan of one optimizer step, from
a config, without loading weights. A stage of its own: it reads models, data and train, and
nothing imports it but the CLI.

    facts.py    the base model, its classes, stored tensors and exact parameter counts
    memory.py   the memory plan (the formulas are in its docstring)
    report.py   what `tuner info` prints
"""

from tuner.plan.facts import GiB, count_parameters, describe_model, parse_size, read_stored_weights
from tuner.plan.memory import memory_plan, plan_memory, resolve_precision
from tuner.plan.report import fit_line, info_report

__all__ = [
    "GiB", "count_parameters", "describe_model", "fit_line", "info_report", "memory_plan", "parse_size",
    "plan_memory", "read_stored_weights", "resolve_precision",
]
