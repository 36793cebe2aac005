"""Reward functions for online RL (`rl: grpo`): the user's own Python, named in the config.

    trl:
      reward_funcs: [rewards.format_reward, rewards.correct]

`rewards.format_reward` is the function `format_reward` of the module `rewards`, found next to
the config file first, then on PYTHONPATH. Importing it is the only code tuner runs from a
config. Each function is called as TRL 1.16 calls it:

    f(prompts=[...], completions=[...], completion_ids=[...], **columns) -> list of numbers

one entry per completion: `prompts[i]` is the prompt of completion i as the row wrote it (a
string, or a list of messages), `completions[i]` its text (for message prompts, a list with one
assistant message, as TRL), `completion_ids[i]` its token ids, and every other column of the
row a keyword argument (a list, one value per completion). A value may be None ("does not
apply"; NaN, left out of the sums, as TRL). A function that cannot be imported, does not take
these arguments, raises, or returns anything but one number per completion is a UserError
naming the function (and the completion and its prompt).
"""

from __future__ import annotations

import importlib
import inspect
import math
import numbers
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.errors import UserError, did_you_mean


@dataclass(frozen=True)
class RewardFunction:
    name: str  # the dotted path as written
    fn: Callable[..., Any]
    weight: float

    @property
    def short(self) -> str:
        """The metric name: the function's own name (rewards/<short>/mean)."""
        return self.name.rsplit(".", 1)[1]


def _forget_other_copies(module: str, search: list[Path]) -> None:
    """A module of that name imported earlier from elsewhere is not the one next to this config:
    drop it (and its submodules) so that the import finds the config's own."""
    top = module.split(".")[0]
    here = next((p for p in search if (p / f"{top}.py").exists() or (p / top / "__init__.py").exists()), None)
    loaded = sys.modules.get(top)
    if here is None or loaded is None:
        return
    origin = Path(getattr(loaded, "__file__", None) or "").resolve()
    if here.resolve() not in (origin.parent, origin.parent.parent):
        for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
            del sys.modules[name]


def _import(module: str, where: str, search: list[Path]) -> Any:
    added = [str(p) for p in search if str(p) not in sys.path]
    sys.path[:0] = added
    importlib.invalidate_caches()
    _forget_other_copies(module, search)
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name and module.startswith(err.name) and (err.name == module or module.startswith(err.name + ".")):
            places = ", ".join(str(p) for p in search) or "nowhere"
            raise UserError(f"{where}: cannot import module {module!r}: no such module next to the config ({places}) "
                            "or on PYTHONPATH") from None
        raise UserError(f"{where}: module {module!r} imports {err.name!r}, which is not installed") from None
    except Exception as err:  # noqa: BLE001 - the user's module may raise anything at import
        raise UserError(f"{where}: importing module {module!r} raised {type(err).__name__}: {err}") from None
    finally:
        for p in added:
            if p in sys.path:
                sys.path.remove(p)


def _check_signature(fn: Callable[..., Any], where: str, name: str) -> None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # a builtin or C callable: checked when called
    params = sig.parameters.values()
    keywords = any(p.kind is p.VAR_KEYWORD for p in params)
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    missing = [n for n in ("prompts", "completions") if n not in names and not keywords]
    if missing:
        raise UserError(f"{where}: {name}{sig} does not take {' and '.join(missing)}; a reward function is called "
                        "as f(prompts, completions, **columns) -> list of numbers (TRL's convention): write "
                        f"def {name.rsplit('.', 1)[1]}(prompts, completions, **kwargs)")


def load_reward_functions(names: list[str], weights: list[float] | None, config_dir: Path | None) -> list[RewardFunction]:
    """The reward functions of `trl.reward_funcs`, imported and checked."""
    search = [config_dir] if config_dir is not None else []
    search += [Path.cwd()] if Path.cwd() not in search else []
    out = []
    for i, name in enumerate(names):
        where = f"trl.reward_funcs[{i}] ({name})"
        module_name, _, attr = name.rpartition(".")
        module = _import(module_name, where, search)
        fn = getattr(module, attr, None)
        if fn is None:
            public = [n for n in vars(module) if not n.startswith("_") and callable(getattr(module, n))]
            raise UserError(f"{where}: module {module_name!r} ({getattr(module, '__file__', '?')}) has no function "
                            f"{attr!r}.{did_you_mean(attr, public)}")
        if not callable(fn):
            raise UserError(f"{where}: {name} is a {type(fn).__name__}, not a function")
        _check_signature(fn, where, name)
        out.append(RewardFunction(name, fn, 1.0 if weights is None else float(weights[i])))
    return out


def _show(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def score(funcs: list[RewardFunction], prompts: list[Any], completions: list[Any], completion_ids: list[list[int]],
          columns: dict[str, list[Any]]) -> list[list[float]]:
    """rewards[f][i]: function f's reward of completion i (NaN where it returned None)."""
    out = []
    for f in funcs:
        try:
            values = f.fn(prompts=prompts, completions=completions, completion_ids=completion_ids, **columns)
        except TypeError as err:
            if "argument" in str(err):
                raise UserError(f"reward function {f.name}: calling it with prompts, completions, completion_ids and "
                                f"the row columns ({', '.join(columns) or 'none'}) failed: {err}. Accept **kwargs "
                                "for the columns you do not use.") from None
            raise UserError(f"reward function {f.name} raised TypeError: {err} (on the prompt "
                            f"{_show(prompts[0])} and {len(prompts) - 1} more)") from None
        except Exception as err:  # noqa: BLE001 - the user's code may raise anything
            raise UserError(f"reward function {f.name} raised {type(err).__name__}: {err} (on the prompt "
                            f"{_show(prompts[0])} and {len(prompts) - 1} more)") from None
        try:
            values = list(values)
        except TypeError:
            raise UserError(f"reward function {f.name} returned {_show(values)}, not a list with one number per "
                            f"completion ({len(completions)})") from None
        if len(values) != len(completions):
            raise UserError(f"reward function {f.name} returned {len(values)} values for {len(completions)} "
                            "completions; return one number per completion")
        row = []
        for i, value in enumerate(values):
            if value is None:
                row.append(math.nan)
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
                raise UserError(f"reward function {f.name} returned {_show(value)} for completion {i} "
                                f"({_show(completions[i])}) of the prompt {_show(prompts[i])}: a reward is a finite "
                                "number (or None where it does not apply)")
            row.append(float(value))
        out.append(row)
    return out
