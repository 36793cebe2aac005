"""Load a YAML config: safe parsing with line numbers, command-line overrides, key routing
to the schema blocks, and error messages that name the key, its line, the value and what
is allowed.

Nothing here imports torch or transformers.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tuner.config import axolotl_keys, compat, dataset_types
from tuner.config.schema import (
    BLOCKS,
    DatasetConfig,
    FSDPConfig,
    GradientCheckpointingKwargs,
    Notice,
    Problem,
    SpecialTokens,
    TunerConfig,
    UserDefinedFormat,
    UserDefinedPreferenceFormat,
    block_of,
    check_rules,
)
from tuner.errors import UserError, did_you_mean

KeyPath = tuple[Any, ...]
COMMAND_LINE = "command line"
# A check the caller adds to validation (the CLI passes the class-name check of
# tuner.models.resolve, which config may not import): the raw top-level mapping -> problems.
Check = Callable[[dict[str, Any]], list[Problem]]


class ConfigError(UserError):
    """One or more problems in a config file, each naming key, line, value and what is allowed."""

    def __init__(self, source: str, lines: list[str]):
        self.source = source
        self.lines = lines
        n = len(lines)
        head = f"{source}: {n} problem{'s' if n != 1 else ''} in the config:"
        super().__init__("\n".join([head, *("  " + line for line in lines)]))


@dataclass
class RawConfig:
    """A parsed YAML mapping plus where each key came from."""

    data: dict[str, Any]
    source: str
    lines: dict[KeyPath, int | str] = field(default_factory=dict)
    notices: list[Notice] = field(default_factory=list)  # e.g. duplicate keys (the last one wins)

    def where(self, path: KeyPath) -> str:
        """'line 12' / 'command line' for the key path, or its nearest parent that has one."""
        for n in range(len(path), 0, -1):
            found = self.lines.get(tuple(path[:n]))
            if found is not None:
                return f"line {found}" if isinstance(found, int) else str(found)
        return ""


# --------------------------------------------------------------------------- YAML parsing


def parse_yaml(text: str, source: str) -> RawConfig:
    """Parse with yaml.SafeLoader (no Python tags), recording the line of every key."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.load(text, Loader=yaml.SafeLoader) if node is not None else None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = err.problem or str(err)
        if isinstance(err, yaml.constructor.ConstructorError) and "tag" in problem:
            problem += " (tuner reads YAML with safe_load: Python object tags are not allowed)"
        raise ConfigError(source, [f"{where}not valid YAML: {problem}"]) from None
    except yaml.YAMLError as err:
        raise ConfigError(source, [f"not valid YAML: {err}"]) from None
    if data is None:
        raise ConfigError(source, ["the file is empty; a config needs at least base_model, datasets, learning_rate"])
    if not isinstance(data, dict):
        raise ConfigError(source, [f"the top level must be a mapping of keys to values, got {type(data).__name__}"])
    lines: dict[KeyPath, int | str] = {}
    notices: list[Notice] = []
    _record_lines(node, (), lines, notices)
    return RawConfig(data=data, source=source, lines=lines, notices=notices)


def _record_lines(node: yaml.Node, path: KeyPath, lines: dict, notices: list[Notice]) -> None:
    """The line of every key; a key written twice in one mapping keeps its last value (as PyYAML and
    Axolotl read it), with a warning naming both lines."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            line = key_node.start_mark.line + 1
            if path + (key,) in lines:
                first = lines[path + (key,)]
                notices.append(Notice(f"{_fmt_path(path + (key,))} (line {line})", "warning",
                                      f"duplicate key: also on line {first}; the last value (line {line}) wins"))
            lines[path + (key,)] = line
            _record_lines(value_node, path + (key,), lines, notices)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[path + (i,)] = item.start_mark.line + 1
            _record_lines(item, path + (i,), lines, notices)


def load_raw(path: str | Path) -> RawConfig:
    p = Path(path)
    if not p.exists():
        raise UserError(f"config file not found: {p}")
    if p.is_dir():
        raise UserError(f"{p} is a folder; pass the path of a YAML config file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{p}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise UserError(f"cannot read config file {p}: {err.strerror}") from None
    return parse_yaml(text, str(p))


# --------------------------------------------------------------------------- overrides


def parse_overrides(args: list[str]) -> list[tuple[KeyPath, Any]]:
    """`--learning_rate 1e-4 --datasets.0.path x.jsonl --bf16` -> [(path, value), ...].

    Values are read as YAML scalars (so `true`, `3`, `[a, b]` work); a flag without a value
    means true. Numbers in a dotted path index into lists.
    """
    out: list[tuple[KeyPath, Any]] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise UserError(f"unexpected argument {arg!r}; overrides look like --learning_rate 1e-4")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 < len(args) and not args[i + 1].startswith("--"):
                value = args[i + 1]
                i += 1
            else:
                value = "true"
        try:
            parsed = yaml.safe_load(value) if value != "" else None
        except yaml.YAMLError:
            parsed = value
        path = tuple(int(p) if p.isdigit() else p for p in key.replace("-", "_").split("."))
        out.append((path, parsed))
        i += 1
    return out


def apply_overrides(raw: RawConfig, overrides: list[tuple[KeyPath, Any]]) -> None:
    for path, value in overrides:
        target: Any = raw.data
        for depth, part in enumerate(path[:-1]):
            try:
                target = target[part]
            except (KeyError, IndexError, TypeError):
                raise ConfigError(
                    COMMAND_LINE, [f"--{'.'.join(map(str, path))}: {_fmt_path(path[: depth + 1])} does not exist in {raw.source}"]
                ) from None
        last = path[-1]
        if isinstance(target, list):
            if not isinstance(last, int) or last >= len(target):
                raise ConfigError(COMMAND_LINE, [f"--{'.'.join(map(str, path))}: no such list item"])
        elif not isinstance(target, dict):
            raise ConfigError(COMMAND_LINE, [f"--{'.'.join(map(str, path))}: {_fmt_path(path[:-1])} is not a mapping"])
        target[last] = value
        raw.lines[path] = COMMAND_LINE


# --------------------------------------------------------------------------- validation


def _fmt_path(path: KeyPath) -> str:
    """('datasets', 0, 'type') -> datasets[0].type; odd key names are quoted."""
    out = ""
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
            continue
        name = part if isinstance(part, str) and part.isidentifier() else repr(part)
        out += f".{name}" if out else name
    return out


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def _unknown_key_problems(
    mapping: dict, known: set[str], axolotl: dict[str, Any], prefix: KeyPath, what: str
) -> list[Problem]:
    """Unknown keys: 'not supported yet' for Axolotl's own keys, else a did-you-mean."""
    problems = []
    for key in list(mapping):
        if key in known:
            continue
        path = prefix + (key,)
        value = mapping[key]
        if not isinstance(key, str):
            problems.append(Problem(path, f"keys must be names, got {_show(key)}"))
        elif key in axolotl:
            if _is_empty(value) or value == axolotl[key]:
                # Asks for nothing beyond Axolotl's default: accepted, and it changes nothing.
                del mapping[key]
                continue
            problems.append(Problem(path, f"{_show(value)}: not supported yet: an Axolotl key tuner does not support "
                                          "yet; remove it (or leave it empty)"))
        else:
            hint = did_you_mean(key, sorted(known))
            problems.append(Problem(path, f"unknown {what} key.{hint or ' See docs/config.md for the keys tuner reads.'}"))
    return problems


def _data_path(loc: tuple, data: Any) -> KeyPath:
    """Keep the parts of a pydantic error location that are real keys or list indices.

    Union types add their member names to the location (`bool`, `literal['auto']`,
    `list[str]`); walking the input data tells the two apart.
    """
    path: list[Any] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
            path.append(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            path.append(part)
        elif isinstance(node, dict) and isinstance(part, str) and not path:
            path.append(part)  # a missing top-level key
            node = None
    return tuple(path)


REASONS = {
    "bool_parsing": "expected true or false",
    "bool_type": "expected true or false",
    "int_parsing": "expected a whole number",
    "int_from_float": "expected a whole number",
    "int_type": "expected a whole number",
    "float_parsing": "expected a number",
    "float_type": "expected a number",
    "string_type": "expected a string",
    "list_type": "expected a list",
    "dict_type": "expected a mapping of keys to values",
    "model_type": "expected a mapping of keys to values",
}


def _reason(e: dict) -> str:
    kind = e["type"]
    ctx = e.get("ctx", {})
    if kind == "literal_error":
        names = [a or b for a, b in re.findall(r"'([^']*)'|(\w+)", ctx.get("expected", "")) if (a or b) != "or"]
        return "expected one of " + ", ".join(names)
    if kind in REASONS:
        return REASONS[kind]
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
    if kind in bounds:
        bound = next(iter(ctx.values()))
        return f"must be {bounds[kind]} {bound}"
    if kind == "too_short":
        return f"needs at least {ctx.get('min_length')} item(s)"
    msg = e["msg"]
    return msg[0].lower() + msg[1:]


def _pydantic_problems(err: ValidationError, data: dict) -> list[Problem]:
    """One problem per key: the value, and every way it could have been valid."""
    by_path: dict[KeyPath, list[dict]] = {}
    problems = []
    extra = []
    for e in err.errors(include_url=False):
        if e["type"] == "extra_forbidden":
            extra.append(Problem(_data_path(e["loc"], data), "unknown key."))
            continue  # reported by _unknown_key_problems, with a did-you-mean
        by_path.setdefault(_data_path(e["loc"], data), []).append(e)
    for path, errors in by_path.items():
        if any(e["type"] == "missing" for e in errors):
            problems.append(Problem(path, "required key is missing"))
            continue
        value = errors[0].get("input")
        reasons = list(dict.fromkeys(_reason(e) for e in errors))
        msg = f"{_show(value)} is not valid: " + "; or ".join(reasons) + "."
        choices = [n for e in errors if e["type"] == "literal_error" for n in _reason(e)[len("expected one of "):].split(", ")]
        if isinstance(value, str) and choices:
            msg += did_you_mean(value, choices)
        problems.append(Problem(path, msg))
    return problems or extra  # `extra` only where no mapping of its own reported the unknown key


def _check_numbers(data: Any, path: KeyPath = ()) -> list[Problem]:
    """NaN and infinity pass pydantic's float checks (ge=0 admits inf); refuse them here."""
    if isinstance(data, float) and not math.isfinite(data):
        return [Problem(path, f"{data!r} is not a finite number")]
    if isinstance(data, dict):
        return [p for k, v in data.items() for p in _check_numbers(v, path + (k,))]
    if isinstance(data, list):
        return [p for i, v in enumerate(data) for p in _check_numbers(v, path + (i,))]
    return []


def validate_raw(raw: RawConfig, checks: Sequence[Check] = ()) -> TunerConfig:
    """Translate Axolotl's legacy keys, route flat keys to blocks, validate each, then check
    cross-field rules and run `checks`. The config's `notices` say what was renamed, what is not
    applied and what to look at; problems raise one ConfigError listing them all."""
    data = dict(raw.data)
    lines = dict(raw.lines)
    problems: list[Problem] = _check_numbers(data)
    notices = list(raw.notices)
    for remark in compat.translate(data, lines) + _dataset_remarks(data):
        if remark.kind == "error":
            problems.append(Problem(remark.path, remark.message))
        else:
            notices.append(Notice(_key(lines, remark.path), remark.kind, remark.message))
    where = RawConfig(data, raw.source, lines)
    problems += _all_unknown_key_problems(data)
    for check in checks:
        problems += check(data)

    blocks: dict[str, BaseModel] = {}
    for name, block in BLOCKS.items():
        values = {k: v for k, v in data.items() if block_of(k) == name}
        try:
            blocks[name] = block.model_validate(values)
        except ValidationError as err:
            problems += _pydantic_problems(err, values)

    if not problems:
        cfg = TunerConfig(**blocks)
        problems += check_rules(cfg)
        if not problems:
            cfg._notices = tuple(notices + [Notice(_key(lines, r.path), r.kind, r.message) for r in _after(cfg)])
            return cfg
    said = {p.path for p in problems if p.message != "unknown key."}
    problems = [p for p in problems if p.message != "unknown key." or p.path not in said]
    raise ConfigError(raw.source, [f"{_fmt_path(p.path)}{_at(where, p.path)}: {p.message}" for p in _sorted(where, problems)])


def _key(lines: dict[KeyPath, Any], path: KeyPath) -> str:
    return f"{_fmt_path(path)}{_at(RawConfig({}, '', lines), path)}"


def _dataset_remarks(data: dict[str, Any]) -> list[compat.Remark]:
    """Legacy dataset spellings (`type: sharegpt`, `message_field_role`, ...) rewritten by
    dataset_types.rewrite_legacy, each with its notice."""
    out = []
    for key in ("datasets", "test_datasets"):
        if not isinstance(data.get(key), list):
            continue
        entries = []
        for i, entry in enumerate(data[key]):
            if isinstance(entry, dict):
                entry, found = dataset_types.rewrite_legacy(entry)
                out += [compat.Remark((key, i, name), "renamed", message) for name, message in found]
            entries.append(entry)
        data[key] = entries
    return out


def _all_unknown_key_problems(data: dict[str, Any]) -> list[Problem]:
    """Unknown keys at the top level and in the nested mappings that have their own schema."""
    known_top = {k for block in BLOCKS.values() for k in block.model_fields}
    problems = _unknown_key_problems(data, known_top, axolotl_keys.TOP_LEVEL, (), "top-level")
    for key in ("datasets", "test_datasets"):
        if not isinstance(data.get(key), list):
            continue
        data[key] = [dict(d) if isinstance(d, dict) else d for d in data[key]]
        for i, ds in enumerate(data[key]):
            if not isinstance(ds, dict):
                continue
            problems += _unknown_key_problems(ds, set(DatasetConfig.model_fields), axolotl_keys.DATASET, (key, i), "dataset")
            if isinstance(ds.get("type"), dict):
                ds["type"] = dict(ds["type"])
                # an instruction format of your own, or (under rl:) a preference one
                known = set(UserDefinedFormat.model_fields) | set(UserDefinedPreferenceFormat.model_fields)
                problems += _unknown_key_problems(
                    ds["type"], known, axolotl_keys.USER_DEFINED_FORMAT, (key, i, "type"), "user-defined format",
                )
    for key, model, axolotl in (("fsdp_config", FSDPConfig, axolotl_keys.FSDP_CONFIG),
                                ("special_tokens", SpecialTokens, axolotl_keys.SPECIAL_TOKENS),
                                ("gradient_checkpointing_kwargs", GradientCheckpointingKwargs, {})):
        if isinstance(data.get(key), dict):
            data[key] = dict(data[key])
            problems += _unknown_key_problems(data[key], set(model.model_fields), axolotl, (key,), key)
    return problems


def _after(cfg: TunerConfig) -> list[compat.Remark]:
    """Notices that need the validated config: cadences with nothing to act on, and local files
    or folders that do not exist on this machine (train would stop on them later)."""
    t, d = cfg.training, cfg.data
    out = []
    if t.evals_per_epoch and not d.val_set_size and not d.test_datasets:
        out.append(compat.Remark(("evals_per_epoch",), "not applied",
                                 "not applied: there is nothing to evaluate (set val_set_size or test_datasets)"))
    if t.gradient_checkpointing_kwargs is not None and not t.gradient_checkpointing:
        out.append(compat.Remark(("gradient_checkpointing_kwargs",), "not applied",
                                 "not applied: gradient_checkpointing is off"))
    out += _schedule_remarks(t)
    if cfg.model.revision_of_model is not None and (looks_local(cfg.model.base_model)
                                                    or cfg.model.base_model.startswith("pkg:")):
        out.append(compat.Remark(("revision_of_model",), "not applied", "not applied: base_model is a local path, "
                                                                         "which has no hub revisions"))
    if d.min_sample_len and cfg.preference.rl:
        out.append(compat.Remark(("min_sample_len",), "not applied", f"not applied: rl: {cfg.preference.rl} rows are "
                                                                      "preference rows (min_sample_len filters SFT rows)"))
    base = cfg.model.base_model
    if (missing := _missing_local(base)) is not None:
        out.append(compat.Remark(("base_model",), "warning", f"{base!r} does not exist here ({missing}); "
                                                              "train will stop on it"))
    for key in ("datasets", "test_datasets"):
        for i, ds in enumerate(getattr(d, key) or []):
            if (missing := _missing_local(ds.path)) is not None:
                out.append(compat.Remark((key, i, "path"), "warning", f"{ds.path!r} does not exist here ({missing}); "
                                                                       "train will stop on it"))
            if ds.revision is not None and looks_local(ds.path):
                out.append(compat.Remark((key, i, "revision"), "not applied",
                                         "not applied: a local path has no hub revisions"))
    return out + _stream_remarks(d)


# With pretraining_dataset: keys of the prepared-data path that a streamed corpus does not use
# (key -> (does the value ask for something, what tuner does instead)).
_STREAM_UNUSED = {
    "sample_packing": (lambda v: v is False, "a streamed corpus is always packed into full sequence_len rows"),
    "shuffle_merged_datasets": (lambda v: v is True, "a streamed corpus is read in its order (shards and rows as "
                                                     "stored; no shuffle buffer)"),
    "train_on_inputs": (lambda v: v is False, "every token of a streamed corpus trains"),
    "excess_length_strategy": (lambda v: True, "a streamed document longer than a row continues in the next row"),
    "min_sample_len": (lambda v: True, "a streamed corpus is not filtered"),
    "dataset_exact_deduplication": (lambda v: bool(v), "a streamed corpus is not deduplicated"),
}


def _stream_remarks(d: Any) -> list[compat.Remark]:
    """Keys a pretraining_dataset run does not use, when their value asks for something."""
    if not d.pretraining_dataset:
        return []
    return [compat.Remark((key,), "not applied", f"not applied: {why}") for key, (asks, why) in _STREAM_UNUSED.items()
            if key in d.model_fields_set and asks(getattr(d, key))]


def _schedule_remarks(t: Any) -> list[compat.Remark]:
    """Axolotl's cosine options that its own rules leave unused here (tuner.train.optim.cosine_variant)."""
    keys = [k for k in ("lr_quadratic_warmup", "cosine_min_lr_ratio", "cosine_constant_lr_ratio") if getattr(t, k)]
    if keys and t.lr_scheduler != "cosine":
        return [compat.Remark((k,), "not applied", f"not applied: it shapes lr_scheduler: cosine only (as in Axolotl), "
                                                   f"and lr_scheduler is {t.lr_scheduler}") for k in keys]
    out = []
    if t.lr_quadratic_warmup:
        out += [compat.Remark((k,), "not applied", "not applied: lr_quadratic_warmup chooses Axolotl's cosine with "
                                                   "quadratic warmup, which decays to 0 (as Axolotl chooses)")
                for k in keys if k != "lr_quadratic_warmup"]
    elif t.cosine_constant_lr_ratio and not t.cosine_min_lr_ratio:
        out.append(compat.Remark(("cosine_constant_lr_ratio",), "not applied", "not applied: the constant phase holds "
                                 "cosine_min_lr_ratio, which is not set (as in Axolotl)"))
    return out


DATA_EXTENSIONS = (".json", ".jsonl", ".csv", ".parquet", ".arrow", ".txt")


def looks_local(path: str) -> bool:
    """A path on this machine rather than a Hugging Face Hub id ('owner/name')."""
    if path.startswith((".", "/", "~")) or path.lower().endswith(DATA_EXTENSIONS + (".gguf",)):
        return True
    parts = path.split("/")
    return os.sep in path and not (len(parts) == 2 and all(parts))


def _missing_local(path: str) -> str | None:
    """Where a local path was looked for when it does not exist; None when it exists or is a hub id."""
    if path.startswith("pkg:"):
        package, _, name = path[len("pkg:"):].partition("/")
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            return f"no installed package {package!r}"
        found = any((Path(folder) / name).exists() for folder in spec.submodule_search_locations)
        return None if found else f"{package} has no file {name!r}"
    if not looks_local(path) or Path(path).expanduser().exists():
        return None
    return f"looked for {Path(path).expanduser().resolve()}"


def _at(raw: RawConfig, path: KeyPath) -> str:
    where = raw.where(path)
    return f" ({where})" if where else ""


def _sorted(raw: RawConfig, problems: list[Problem]) -> list[Problem]:
    def line(p: Problem) -> int:
        found = raw.where(p.path)
        return int(found.split()[1]) if found.startswith("line ") else 10**9

    return sorted(problems, key=line)


def load_config(path: str | Path, overrides: list[str] | None = None, checks: Sequence[Check] = ()) -> TunerConfig:
    """Read, override and validate a config file. Raises ConfigError (a UserError); what was
    accepted but is worth saying (renamed keys, keys not applied here) is in `cfg.notices`."""
    raw = load_raw(path)
    if overrides:
        apply_overrides(raw, parse_overrides(overrides))
    cfg = validate_raw(raw, checks)
    cfg._config_dir = str(Path(path).resolve().parent)
    return cfg


def dump_config(cfg: TunerConfig) -> str:
    """The resolved config as YAML, grouped by block, every default filled in."""
    parts = []
    for name, block in BLOCKS.items():
        values = cfg.block_values(name)
        parts.append(f"# --- {name} ({block.__doc__.strip().splitlines()[0]})\n")
        parts.append(yaml.safe_dump(values, sort_keys=False, allow_unicode=True, width=100))
    return "".join(parts)
