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

A reward model is a reward too: an entry of `reward_funcs` written as a folder path (`./rm`,
`models/rm`), or `reward_model_path` (one more reward, after `reward_funcs`), found next to the
config file first, then from the working directory. It is a sequence classifier with one
output: a model trained with `reward_model: true` (its full folder, or its adapter folder with
head_config.json), or any such model saved with save_pretrained, with its tokenizer. It loads
frozen, in eval mode, on the training device in the training's compute dtype, and scores each
completion as TRL 1.16's GRPOTrainer does: the text is prompt + completion (message prompts:
the reward model's chat template applied to the prompt's messages followed by the completion
as an assistant message), tokenized without added special tokens, right-padded with the
tokenizer's pad token (EOS if it has none, which becomes the model config's pad token, as
TRL), and the reward is logits[:, 0]. Its metrics are named after the folder.
"""

from __future__ import annotations

import importlib
import inspect
import json
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
    name: str  # the dotted path (or the reward model's folder) as written
    fn: Callable[..., Any]
    weight: float
    short: str = ""  # the metric name (rewards/<short>/mean): the function's own name, or the folder's

    def __post_init__(self) -> None:
        if not self.short:
            object.__setattr__(self, "short", self.name.rsplit(".", 1)[-1])


def find_folder(entry: str, where: str, search: list[Path]) -> Path:
    """A reward model's folder: the path as written (absolute, or relative to the config's folder,
    then the working directory); a UserError naming `where` when it is not a model folder."""
    path = Path(entry).expanduser()
    tried = [path] if path.is_absolute() else [p / path for p in search]
    found = next((p for p in tried if p.is_dir()), None)
    if found is None:
        raise UserError(f"{where}: no folder {entry!r} (looked for {', '.join(str(p.resolve()) for p in tried)}); "
                        "a reward model is a local folder saved by tuner (reward_model: true) or save_pretrained")
    if not (found / "config.json").is_file() and not (found / "adapter_config.json").is_file():
        raise UserError(f"{where}: {found} holds no config.json: not a model folder (a reward model trained with "
                        "reward_model: true, or a sequence classifier saved with save_pretrained)")
    return found.absolute()


def _head_of(folder: Path) -> tuple[list[str], int]:
    """(architectures, number of labels) a model folder was saved with, read from its JSON."""
    from tuner.models.heads import HEAD_CONFIG

    adapter = (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file()
    file = folder / (HEAD_CONFIG if adapter else "config.json")
    if not file.is_file():  # an adapter without head_config.json: a causal-LM adapter
        return [], 0
    config = json.loads(file.read_text(encoding="utf-8"))
    labels = config.get("num_labels") or len(config.get("id2label") or {}) or 2  # transformers' default: 2
    # head_config.json is written for classifiers only (its architectures are the base checkpoint's)
    archs = ["AutoModelForSequenceClassification"] if adapter else list(config.get("architectures") or [])
    return archs, int(labels)


class RewardModel:
    """A reward model as a reward function: frozen, scoring prompt + completion as TRL 1.16."""

    def __init__(self, folder: Path, where: str):
        from tuner.config.schema import is_sequence_classifier

        self.folder, self.where = folder, where
        archs, labels = _head_of(folder)
        if not any(is_sequence_classifier(a) for a in archs) or labels != 1:
            what = (f"a sequence classifier with {labels} labels" if any(is_sequence_classifier(a) for a in archs)
                    else f"a {', '.join(archs) or 'model without a sequence-classification head'}")
            raise UserError(f"{where}: {folder} is {what}; a reward model is a sequence classifier with one output "
                            "(num_labels 1), e.g. one trained with reward_model: true")
        self.model: Any = None
        self.tokenizer: Any = None

    def load(self, device: Any, dtype: Any) -> None:
        """Load the weights (once): frozen, eval mode, on `device` in `dtype`."""
        if self.model is not None:
            return
        from tuner.models.heads import load_trained

        model, tokenizer = load_trained(self.folder, dtype=dtype)
        if hasattr(model, "merge_and_unload"):  # a reward model's adapter: merged, it is a plain classifier
            model = model.merge_and_unload()
        if model.config.num_labels != 1:
            raise UserError(f"{self.where}: {self.folder} loads with {model.config.num_labels} labels; a reward model "
                            "has one output (num_labels 1)")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.config.get_text_config().pad_token_id = tokenizer.pad_token_id  # the last non-pad token is read (TRL)
        model.requires_grad_(False)
        self.model, self.tokenizer = model.to(device=device, dtype=dtype).eval(), tokenizer

    def texts(self, prompts: list[Any], completions: list[Any]) -> list[str]:
        """What is scored, as TRL's GRPOTrainer builds it (per completion, so that a dataset may mix
        message prompts and string prompts)."""
        if any(isinstance(p, list) for p in prompts) and not getattr(self.tokenizer, "chat_template", None):
            raise UserError(f"{self.where}: the prompts are conversations but the tokenizer in {self.folder} has no "
                            "chat template to render prompt + completion with")
        return [self.tokenizer.apply_chat_template(p + c, tokenize=False) if isinstance(p, list) else p + c
                for p, c in zip(prompts, completions)]

    def __call__(self, prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        import torch

        assert self.model is not None, "RewardModel.load first"
        inputs = self.tokenizer(text=self.texts(prompts, completions), return_tensors="pt", padding=True,
                                padding_side="right", add_special_tokens=False)
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            logits = self.model(**{k: v.to(device) for k, v in inputs.items()}).logits
        return [float(v) for v in logits[:, 0].float().cpu()]


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


def load_reward_functions(names: list[str], weights: list[float] | None, config_dir: Path | None,
                          model_path: str | None = None) -> list[RewardFunction]:
    """The rewards of `trl.reward_funcs` (functions imported and checked; reward model folders
    checked, their weights loaded by RewardModel.load), then `trl.reward_model_path`'s."""
    from tuner.config.schema import is_model_path

    search = [config_dir] if config_dir is not None else []
    search += [Path.cwd()] if Path.cwd() not in search else []
    out: list[RewardFunction] = []
    entries = [(f"trl.reward_funcs[{i}] ({name})", name, is_model_path(name)) for i, name in enumerate(names)]
    if model_path is not None:
        entries.append((f"trl.reward_model_path ({model_path})", model_path, True))
    for i, (where, name, is_model) in enumerate(entries):
        weight = 1.0 if weights is None else float(weights[i])
        if is_model:
            folder = find_folder(name, where, search)
            short = Path(name).expanduser().name or folder.resolve().name  # the folder's name as written
            if any(f.short == short for f in out):
                short = f"{short}_{i}"
            out.append(RewardFunction(name, RewardModel(folder, where), weight, short))
            continue
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
        short = attr if all(f.short != attr for f in out) else name
        out.append(RewardFunction(name, fn, weight, short))
    return out


def reward_models(funcs: list[RewardFunction]) -> list[RewardModel]:
    return [f.fn for f in funcs if isinstance(f.fn, RewardModel)]


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
