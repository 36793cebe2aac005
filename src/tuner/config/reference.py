"""The config reference, generated from the schema: `tuner config-schema` and docs/config.md.

Every key with its type, default, allowed values, one-line description and the Axolotl
key it corresponds to. A test regenerates docs/config.md and fails when the committed
file differs, so the reference cannot drift from the code.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from tuner.config import axolotl_keys
from tuner.config.schema import (
    BLOCKS,
    DatasetConfig,
    FSDPConfig,
    GradientCheckpointingKwargs,
    QuantizationKwargs,
    SpecialTokens,
    TRLBlock,
    TunerConfig,
    UserDefinedFormat,
)

NESTED = {
    "datasets[] / test_datasets[]": (DatasetConfig, axolotl_keys.DATASET),
    "datasets[].type (user-defined format)": (UserDefinedFormat, axolotl_keys.USER_DEFINED_FORMAT),
    "special_tokens": (SpecialTokens, axolotl_keys.SPECIAL_TOKENS),
    "fsdp_config": (FSDPConfig, axolotl_keys.FSDP_CONFIG),
    "gradient_checkpointing_kwargs": (GradientCheckpointingKwargs, {"use_reentrant": None}),
    "model_quantization_config_kwargs": (QuantizationKwargs, {"dequantize": None, "modules_to_not_convert": None}),
    "trl (rl: grpo; beta also for preference training)": (TRLBlock, dict.fromkeys(k for k in TRLBlock.model_fields
                                                                             if k != "reward_model_path")),  # Axolotl's
}


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(json.dumps(a) if isinstance(a, str) else str(a).lower() if isinstance(a, bool) else str(a) for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " | ".join(_type_name(a) for a in args)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: Any) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.get_default(call_default_factory=True)
    return json.dumps(value) if not isinstance(value, BaseModel) else "{}"


def rows(model: type[BaseModel], axolotl: dict[str, Any]) -> list[dict[str, str]]:
    out = []
    for name, field in model.model_fields.items():
        out.append({
            "key": name,
            "type": _type_name(field.annotation),
            "default": _default(field),
            "description": (field.description or "").strip(),
            "axolotl": name if name in axolotl else "(tuner only)",
        })
    return out


def schema_json() -> str:
    return json.dumps(TunerConfig.model_json_schema(), indent=2, sort_keys=True)


def markdown() -> str:
    lines = [
        "# tuner config reference",
        "",
        "Generated from the schema by `tuner config-schema --format markdown`; do not edit by hand",
        "(a test fails when this file is out of date). The YAML is flat, like Axolotl's: every key",
        "below sits at the top level of the file, except the nested ones at the end.",
        "`axolotl` names the Axolotl 0.19 key with the same meaning; an Axolotl config that uses only",
        "these keys runs unchanged. Axolotl keys missing here are refused as \"not supported yet\"",
        "unless empty or set to Axolotl's default.",
    ]
    sections = [(f"{name} block: {block.__doc__.strip().splitlines()[0]}", block, axolotl_keys.TOP_LEVEL)
                for name, block in BLOCKS.items()]
    sections += [(name, model, keys) for name, (model, keys) in NESTED.items()]
    for title, model, keys in sections:
        lines += ["", f"## {title}", "", "| key | type | default | description | axolotl |", "| --- | --- | --- | --- | --- |"]
        for r in rows(model, keys):
            cells = [f"`{r['key']}`", r["type"].replace("|", "\\|"), f"`{r['default']}`",
                     r["description"].replace("|", "\\|"), r["axolotl"]]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- defaults vs Axolotl

# Schema keys whose default differs from the one axolotl_keys.py lists for Axolotl 0.19, but which
# is what Axolotl (or the HF Trainer under it) does when the key is left unset.
SAME_WHEN_UNSET = {
    "base_model": "required", "datasets": "required", "learning_rate": "required",
    "tokenizer_use_fast": "true", "attn_implementation": "sdpa (transformers')",
    "dataset_prepared_path": "last_run_prepared", "excess_length_strategy": "drop", "sample_packing": "false",
    "batch_flattening": "false", "pad_to_sequence_len": "false", "adam_beta1": "0.9 (HF Trainer)",
    "adam_beta2": "0.999 (HF Trainer)", "adam_epsilon": "1e-08 (HF Trainer)", "max_grad_norm": "1.0 (HF Trainer)",
    "fp16": "false", "torch_compile": "false", "use_tensorboard": "false", "wandb_mode": "online (W&B's)",
    "use_mlflow": "false", "seed": "42 (HF Trainer)", "peft_use_dora": "false", "peft_use_rslora": "false",
    "precompute_ref_log_probs": "false (TRL's)", "reward_model": "false", "tokenizer_use_mistral_common": "false",
}

# Keys whose default (or what their default does) differs from Axolotl 0.19: (Axolotl, why).
# The tuner column is read from the schema, so a changed default changes the README table.
DIFFERS = {
    "num_epochs": ("`1.0`", "the length of a run should be a decision: set `num_epochs` or `max_steps`"),
    "logging_steps": ("about 0.5% of the steps (max 10)", "per-step metrics are cheap and make curves readable"),
    "lora_r": ("required with an adapter", "peft's usual values"),
    "lora_alpha": ("required with an adapter", "peft's usual values"),
    "bf16": ("`auto` (on where the GPU has bf16)", "precision is asked for; `bf16: auto` turns it on also on CPUs "
             "with AMX / AVX512-BF16, where bf16 matmuls are ~7x faster than fp32"),
    "gradient_checkpointing_kwargs": ("`{use_reentrant: true}` when gradient_checkpointing is on",
                                      "non-reentrant checkpointing works with frozen inputs (LoRA) as is"),
    "fsdp_config.fsdp_version": ("`1` when unset", "FSDP2 shards per parameter and is what accelerate recommends"),
    "trust_remote_code": ("unset (false)", "`false`, and a model that needs it fails with an explanation: running "
                          "a repo's code is a decision"),
    "overwrite_output_dir": ("(HF Trainer key, not Axolotl's)", "`false`: a finished run is never overwritten by "
                             "accident; hours of training are worth a prompt"),
}
# Behaviours (not key defaults) that differ: (what, tuner, Axolotl, why).
BEHAVIOURS = [
    ("`completion` rows over `sequence_len`", "follow `excess_length_strategy` (drop); `split` cuts them into "
     "`sequence_len` pieces, a dataset's `overlap_len` repeated as untrained context",
     "split into `sequence_len` chunks, the `overlap_len` tokens trained twice",
     "one rule for every type; with `split`, each token is trained once"),
    ("`lr_scheduler: constant`", "linear warmup, then constant", "constant from step 0 (warmup ignored)",
     "the warmup you set is used (write `constant` or `constant_with_warmup`)"),
]


def _schema_default(key: str) -> str:
    from tuner.config.schema import block_of

    if key == "fsdp_config.fsdp_version":
        return f"`{_default(FSDPConfig.model_fields['fsdp_version'])}`"
    if key == "gradient_checkpointing_kwargs":
        return f"`{{use_reentrant: {_default(GradientCheckpointingKwargs.model_fields['use_reentrant'])}}}`"
    block = BLOCKS.get(block_of(key) or "")
    if block is None:
        return "(tuner only)"
    return f"`{_default(block.model_fields[key])}`"


def defaults_table() -> str:
    """README's "Defaults that differ from Axolotl 0.19" table (tests/unit/test_readme_tables.py)."""
    lines = ["| key | tuner | Axolotl 0.19 | why |", "| --- | --- | --- | --- |"]
    for key, (axolotl, why) in DIFFERS.items():
        lines.append(f"| `{key}` | {_schema_default(key)} | {axolotl} | {why} |")
    for what, tuner, axolotl, why in BEHAVIOURS:
        lines.append(f"| {what} | {tuner} | {axolotl} | {why} |")
    return "\n".join(lines) + "\n"


def undocumented_defaults() -> list[str]:
    """Schema keys whose default is not Axolotl's and that neither table explains (must be empty)."""
    out = []
    for block in BLOCKS.values():
        for key, field in block.model_fields.items():
            if key in axolotl_keys.TOP_LEVEL and json.dumps(axolotl_keys.TOP_LEVEL[key]) != _default(field):
                if key not in SAME_WHEN_UNSET and key not in DIFFERS:
                    out.append(key)
    return out


# --------------------------------------------------------------------------- generated README sections

def replace_section(text: str, name: str, body: str) -> str:
    """Replace what lies between `<!-- generated: NAME -->` and `<!-- end: NAME -->`."""
    start, end = f"<!-- generated: {name} -->\n", f"<!-- end: {name} -->"
    head, found, rest = text.partition(start)
    if not found or end not in rest:
        raise ValueError(f"README has no generated section {name!r}")
    return head + start + body + end + rest.split(end, 1)[1]


def section(text: str, name: str) -> str:
    start, end = f"<!-- generated: {name} -->\n", f"<!-- end: {name} -->"
    return text.split(start, 1)[1].split(end, 1)[0]


# --------------------------------------------------------------------------- Axolotl's own examples

# What an example is for, when it is not text SFT / LoRA / QLoRA (by the keys it sets).
NOT_TEXT_SFT = (
    ("processor_type", "multimodal"), ("rl", "RL / preference training"), ("reward_model", "reward model"),
    ("process_reward_model", "reward model"), ("num_labels", "classification"), ("qat", "QAT"),
    ("pretraining_dataset", "streaming pretraining"), ("diffusion", "diffusion LM"),
)


def example_kind(data: Any) -> str:
    """'text SFT', or what else an Axolotl example config is."""
    if not isinstance(data, dict) or "base_model" not in data:
        return "not a training config"
    for key, kind in NOT_TEXT_SFT:
        if data.get(key):
            return kind
    return "text SFT"


def failure_reason(line: str) -> str:
    """A ConfigError line as a reason a user can act on (the capability when not supported yet)."""
    import re

    if m := re.search(r"not supported yet: (.+?)\. An Axolotl key", line):
        return m.group(1)
    if m := re.search(r" (?:for|is) (.+?): not supported yet", line):  # dataset types and templates
        return m.group(1)
    key = re.split(r" \(line \d+\)|: ", line, maxsplit=1)[0]
    key = re.sub(r"\[\d+\]", "[]", key)
    if "is set but there is no adapter" in line:
        return "LoRA keys without `adapter` (refused on purpose: a forgotten `adapter: lora`)"
    if "no such DeepSpeed JSON file" in line:
        return "a DeepSpeed JSON file that is not here (Axolotl's repo-relative deepspeed_configs/)"
    if "is not a transformers class" in line:
        return "a model class transformers does not have (" + line.split(": ", 1)[1].split(" is not")[0] + ")"
    if "not a causal language model" in line:
        return "a model class that is not a causal LM (multimodal model classes)"
    if "unknown top-level key" in line:
        return f"a key Axolotl does not have either (`{key}`)"
    if key == "rl" and "is not valid" in line:
        return "an RL method tuner does not train yet (rl: " + line.split(": ", 1)[1].split(" is not valid")[0] + ")"
    if "unknown dataset key" in line:
        return f"a dataset key tuner does not read (`{key.rsplit('.', 1)[-1]}`)"
    if key.endswith("chat_template") and "is not valid" in line:
        return "chat templates tuner does not ship yet (" + line.split(": ", 1)[1].split(" is not valid")[0] + ")"
    return f"other: {line}"


@dataclass
class ExampleResult:
    path: str
    kind: str
    reasons: list[str]  # empty: validates unchanged


def check_examples(paths: list[Path], root: Path, checks: Sequence[Any] = ()) -> list[ExampleResult]:
    """Validate every example unchanged (no override) and say why each that fails does."""
    import yaml

    from tuner.config.load import ConfigError, load_raw, validate_raw

    out = []
    for path in paths:
        kind = example_kind(yaml.safe_load(path.read_text(encoding="utf-8")))
        try:
            validate_raw(load_raw(path), checks)
            reasons: list[str] = []
        except ConfigError as err:
            reasons = sorted({failure_reason(line) for line in err.lines})
        out.append(ExampleResult(str(path.relative_to(root)), kind, reasons))
    return out


def examples_table(results: list[ExampleResult], source: str) -> str:
    """README's table of how many Axolotl examples validate unchanged, and what the rest need."""
    from collections import Counter

    sft = [r for r in results if r.kind == "text SFT"]
    ok = [r for r in sft if not r.reasons]
    lines = [
        f"**{len(ok)} of {len(sft)}** text SFT / LoRA / QLoRA examples ({100 * len(ok) / len(sft):.0f}%) and "
        f"{sum(not r.reasons for r in results)} of all {len(results)} YAML files under Axolotl's `examples/` "
        f"({source}) validate unchanged. Measured by `tests/unit/test_axolotl_examples.py` (which also writes "
        "this section: `TUNER_WRITE_README=1 pytest tests/unit/test_axolotl_examples.py`).",
        "",
        "| what the other text SFT examples need | examples |",
        "| --- | --- |",
    ]
    needs = Counter(reason for r in sft for reason in r.reasons)
    lines += [f"| {reason} | {n} |" for reason, n in sorted(needs.items(), key=lambda kv: (-kv[1], kv[0]))]
    others = Counter(r.kind for r in results if r.kind != "text SFT")
    lines += ["", "| the other examples | files | validate |", "| --- | --- | --- |"]
    for kind, n in sorted(others.items(), key=lambda kv: (-kv[1], kv[0])):
        valid = sum(not r.reasons for r in results if r.kind == kind)
        lines.append(f"| {kind} | {n} | {valid} |")
    return "\n".join(lines) + "\n"


def not_applied_table() -> str:
    """README's list of the Axolotl keys tuner accepts and reports as not applied (config/compat.py)."""
    from tuner.config import compat

    by_reason: dict[str, list[str]] = {}
    for key, why in compat.NOT_APPLIED.items():
        by_reason.setdefault(why, []).append(key)
    for prefix, (kind, why) in compat.PLUGINS.items():
        if kind == "not applied":
            by_reason.setdefault(why, []).append(f"plugins: {prefix}.*")
    lines = ["| keys (any value that asks for something) | reported as not applied, because |", "| --- | --- |"]
    for why, keys in by_reason.items():
        lines.append(f"| {', '.join(f'`{k}`' for k in keys)} | {why} |")
    return "\n".join(lines) + "\n"
