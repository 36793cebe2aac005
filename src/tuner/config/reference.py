"""The config reference, generated from the schema: `tuner config-schema` and docs/config.md.

Every key with its type, default, allowed values, one-line description and the Axolotl
key it corresponds to. A test regenerates docs/config.md and fails when the committed
file differs, so the reference cannot drift from the code.
"""

from __future__ import annotations

import json
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from tuner.config import axolotl_keys
from tuner.config.schema import BLOCKS, DatasetConfig, FSDPConfig, SpecialTokens, TunerConfig, UserDefinedFormat

NESTED = {
    "datasets[] / test_datasets[]": (DatasetConfig, axolotl_keys.DATASET),
    "datasets[].type (user-defined format)": (UserDefinedFormat, axolotl_keys.USER_DEFINED_FORMAT),
    "special_tokens": (SpecialTokens, axolotl_keys.SPECIAL_TOKENS),
    "fsdp_config": (FSDPConfig, axolotl_keys.FSDP_CONFIG),
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
