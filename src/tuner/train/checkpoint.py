"""What training writes to disk: checkpoints for exact resume, and the final model.

Checkpoint layout (`output_dir/checkpoints/step-000040/`):
    trainable.safetensors   the parameters that train (all weights, or the adapter's)
    optimizer.safetensors   optimizer state tensors        + optimizer.json (the rest)
    scheduler.json          learning-rate schedule state
    rng-<rank>.safetensors  torch RNG states               + rng-<rank>.json (python, numpy)
    data-<rank>.json        a streamed corpus: each process's position in it (tuner.data.stream)
    objective-<rank>.safetensors  an objective's own state (GRPO with num_iterations > 1: the
                            sampled batch the next steps train on again)
    checkpoint.json         step, epoch, counters, run settings; written last

Nothing in a checkpoint needs pickle: tensors are safetensors, everything else JSON. A
checkpoint is written to a temporary folder and renamed into place when complete; a folder
without `checkpoint.json` is incomplete and never used.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import random
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from tuner import __version__
from tuner.config import TunerConfig, dump_config
from tuner.errors import UserError
from tuner.models.heads import is_classifier, write_head_config

log = logging.getLogger("tuner")

RUN_RECORD = "tuner_run.json"
CONFIG_COPY = "tuner_config.yml"
CHECKPOINTS = "checkpoints"
MARKER = "checkpoint.json"
LIBRARIES = ("torch", "transformers", "accelerate", "peft", "datasets", "tokenizers", "safetensors", "bitsandbytes")
STEP_DIR = re.compile(r"^step-(\d+)$")
# Files a finished run leaves in output_dir (cleared by overwrite_output_dir).
RUN_FILES = (
    RUN_RECORD, CONFIG_COPY, "metrics.jsonl", "adapter_model.safetensors", "adapter_config.json",
    "model.safetensors", "model.safetensors.index.json", "config.json", "generation_config.json",
)


def library_versions() -> dict[str, str]:
    out = {"tuner": __version__, "python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


# --------------------------------------------------------------------------- checkpoints


@dataclass
class TrainerState:
    """Where a run is: enough, with the plan, to continue exactly where it stopped."""

    step: int  # optimizer steps done
    trained_tokens: int
    # Run settings a resume must share (else the data order or normalisation would differ).
    data_fingerprint: str
    rows: int
    micro_batch_size: int
    gradient_accumulation_steps: int
    world_size: int
    seed: int
    total_steps: int
    best_eval_loss: float | None = None
    skipped_steps: int = 0  # updates skipped for a non-finite loss (nan_policy: skip)
    evals_without_improvement: int = 0  # evaluations since eval_loss last beat its best (early_stopping_patience)
    repeats: int = 1  # optimizer steps per step's units (GRPO's num_iterations)

    # Settings a resumed run must share with the checkpoint, and the counters it takes over.
    SAME = ("data_fingerprint", "rows", "micro_batch_size", "gradient_accumulation_steps", "world_size", "seed",
            "repeats")
    CARRIED = ("step", "trained_tokens", "best_eval_loss", "skipped_steps", "evals_without_improvement")

    @classmethod
    def new(cls, data_fingerprint: str, plan: Any) -> TrainerState:
        """Step 0 of a run with this data and step plan (a tuner.train.step_plan.StepPlan)."""
        return cls(step=0, trained_tokens=0, data_fingerprint=data_fingerprint, rows=plan.rows,
                   micro_batch_size=plan.micro_batch_size, gradient_accumulation_steps=plan.accumulation,
                   world_size=plan.world_size, seed=plan.seed, total_steps=plan.total_steps, repeats=plan.repeats)

    def continue_from(self, saved: TrainerState, path: Path) -> None:
        """Take over a checkpoint's counters; refuse one made with settings that change the
        data order or the loss normalisation (the run could not continue exactly)."""
        changed = [f"{f}: {getattr(saved, f)} -> {getattr(self, f)}" for f in self.SAME
                   if getattr(saved, f) != getattr(self, f)]
        if changed:
            raise UserError(
                f"resume_from_checkpoint: {path} was made with different settings, so the run cannot continue "
                f"exactly ({'; '.join(changed)}). Restore them, or start a new run."
            )
        for name in self.CARRIED:
            setattr(self, name, getattr(saved, name))


def checkpoint_dirs(out_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = out_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and (p / MARKER).is_file()]
    return [p for _, p in sorted(found)]


def find_resume_checkpoint(value: str | None, out_dir: Path) -> Path | None:
    """`resume_from_checkpoint`: a checkpoint folder, or `auto` for the newest complete one."""
    if value is None:
        return None
    if value == "auto":
        found = checkpoint_dirs(out_dir)
        return found[-1] if found else None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise UserError(f"resume_from_checkpoint: {value!r} does not exist")
    if not (path / MARKER).is_file():
        raise UserError(
            f"resume_from_checkpoint: {value!r} is not a complete checkpoint (no {MARKER}); "
            f"complete ones in {out_dir}: {', '.join(p.name for p in checkpoint_dirs(out_dir)) or 'none'}"
        )
    return path


def prepare_output_dir(out_dir: Path, t: Any) -> Path | None:
    """Refuse to overwrite a run unless asked; return the checkpoint to resume from, if any.
    `t` is the config's TrainingBlock."""
    resume = find_resume_checkpoint(t.resume_from_checkpoint, out_dir)
    if resume is not None:
        return resume
    finished = (out_dir / RUN_RECORD).is_file()
    unfinished = bool(checkpoint_dirs(out_dir))
    if (finished or unfinished) and not t.overwrite_output_dir:
        what = "a finished run" if finished else "checkpoints of an unfinished run"
        hint = "" if finished else " resume it with `--resume_from_checkpoint auto`, or"
        raise UserError(
            f"output_dir: {out_dir} already holds {what}. To keep it, choose another output_dir;"
            f"{hint} set `overwrite_output_dir: true` to replace it."
        )
    if t.overwrite_output_dir:
        clear_previous_run(out_dir)
    if t.resume_from_checkpoint == "auto":
        log.info("resume_from_checkpoint: auto found no complete checkpoint in %s; starting at step 0", out_dir)
    return None


def _rng_states() -> tuple[dict[str, Any], dict[str, Any]]:
    import numpy as np
    import torch

    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = state
    py = random.getstate()
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    plain = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
    }
    return tensors, plain


def _set_rng_states(tensors: dict[str, Any], plain: dict[str, Any]) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    version_, keys, gauss = plain["python"]
    random.setstate((version_, tuple(keys), gauss))
    kind, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def _optimizer_to_files(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split an optimizer state_dict into tensors (safetensors) and the rest (JSON). Tensors
    nested in a value (bitsandbytes keeps its quantization state as a dict of tensors) are
    stored by path and left in the JSON as {"__tensor__": name}."""
    import torch

    tensors, plain_state = {}, {}
    for idx, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value.contiguous()
            else:
                plain_state.setdefault(str(idx), {})[key] = _tensors_out(value, f"{idx}.{key}", tensors)
    return tensors, {"state": plain_state, "param_groups": state["param_groups"]}


def _tensors_out(value: Any, name: str, tensors: dict[str, Any]) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        # a copy: bitsandbytes shares one qmap tensor between every parameter's state, and
        # safetensors refuses tensors that share memory
        tensors[name] = value.detach().clone().contiguous()
        return {"__tensor__": name}
    if isinstance(value, dict):
        return {k: _tensors_out(v, f"{name}/{k}", tensors) for k, v in value.items()}
    return value


def _tensors_in(value: Any, tensors: dict[str, Any]) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__tensor__"}:
            return tensors[value["__tensor__"]]
        return {k: _tensors_in(v, tensors) for k, v in value.items()}
    return value


def _optimizer_from_files(tensors: dict[str, Any], plain: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        if "/" in name:
            continue  # nested in a value: placed by _tensors_in
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = tensor
    for idx, values in plain["state"].items():
        state.setdefault(int(idx), {}).update({k: _tensors_in(v, tensors) for k, v in values.items()})
    groups = []
    for g in plain["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def trainable_state(model: Any) -> dict[str, Any]:
    return {name: p.detach().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(
    out_dir: Path, model: Any, optimizer: Any, scheduler: Any, state: TrainerState, rank: int = 0,
    keep: int | None = None, barrier: Callable[[], Any] | None = None, data_state: dict[str, Any] | None = None,
    objective_state: dict[str, Any] | None = None,
) -> Path:
    """Write a complete checkpoint atomically; keep only the newest `keep` ones.

    Every process calls this: each writes its own RNG states; the main process (rank 0)
    writes the rest and renames the folder into place. `barrier` synchronises them.
    """
    from safetensors.torch import save_file

    wait = barrier or (lambda: None)
    root = out_dir / CHECKPOINTS
    final = root / f"step-{state.step:06d}"
    staging = root / f".{final.name}.staging"
    if rank == 0:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    wait()
    try:
        rng_tensors, rng_plain = _rng_states()
        save_file(rng_tensors, str(staging / f"rng-{rank}.safetensors"))
        (staging / f"rng-{rank}.json").write_text(json.dumps(rng_plain))
        if data_state is not None:
            (staging / f"data-{rank}.json").write_text(json.dumps(data_state))
        if objective_state:
            save_file(objective_state, str(staging / f"objective-{rank}.safetensors"))
        wait()
        if rank == 0:
            save_file(trainable_state(model), str(staging / "trainable.safetensors"))
            opt_tensors, opt_plain = _optimizer_to_files(optimizer.state_dict())
            save_file(opt_tensors, str(staging / "optimizer.safetensors"))
            (staging / "optimizer.json").write_text(json.dumps(opt_plain))
            (staging / "scheduler.json").write_text(json.dumps(scheduler.state_dict()))
            (staging / MARKER).write_text(json.dumps(asdict(state), indent=2))  # last: marks completion
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging, final)
            if keep is not None:
                for old in checkpoint_dirs(out_dir)[:-keep]:
                    shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        if rank == 0:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    wait()
    return final


def read_state(path: Path) -> TrainerState:
    try:
        saved = json.loads((path / MARKER).read_text())
        return TrainerState(**{f.name: saved[f.name] for f in fields(TrainerState) if f.name in saved})
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise UserError(f"resume_from_checkpoint: {path / MARKER} is unreadable: {err}") from None


def load_checkpoint(path: Path, model: Any, optimizer: Any, scheduler: Any, rank: int = 0) -> TrainerState:
    """Restore weights, optimizer, schedule and RNG states. Never unpickles anything."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    state = read_state(path)
    try:
        weights = load_file(str(path / "trainable.safetensors"))
        opt_tensors = load_file(str(path / "optimizer.safetensors"))
        opt_plain = json.loads((path / "optimizer.json").read_text())
        sched = json.loads((path / "scheduler.json").read_text())
        rng_tensors = load_file(str(path / f"rng-{rank}.safetensors"))
        rng_plain = json.loads((path / f"rng-{rank}.json").read_text())
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(
            f"resume_from_checkpoint: {path} is damaged or not a tuner checkpoint "
            f"({type(err).__name__}: {str(err)[:200]}); checkpoints hold only safetensors and JSON"
        ) from None
    params = dict(model.named_parameters())
    expected = {n for n, p in params.items() if p.requires_grad}
    if set(weights) != expected:
        missing, extra = sorted(expected - set(weights))[:3], sorted(set(weights) - expected)[:3]
        raise UserError(
            f"resume_from_checkpoint: {path} was saved from a different model or adapter setup "
            f"(missing: {missing}, unexpected: {extra})"
        )
    for name, tensor in weights.items():
        params[name].data.copy_(tensor)
    optimizer.load_state_dict(_optimizer_from_files(opt_tensors, opt_plain))
    scheduler.load_state_dict(sched)
    _set_rng_states(rng_tensors, rng_plain)
    return state


def stream_position(batches: Any) -> dict[str, Any] | None:
    """Where a streamed batches source (tuner.data.stream.StreamBatches) stands; None for prepared
    rows, whose position the step alone gives."""
    state_dict = getattr(batches, "state_dict", None)
    return state_dict() if state_dict is not None else None


def restore_stream_position(batches: Any, path: Path, rank: int, rows_done: int) -> None:
    """Put a streamed batches source back where checkpoint `path` left it (nothing to do for
    prepared rows); its rows served must be those of the steps done."""
    if getattr(batches, "load_state_dict", None) is None:
        return
    try:
        state = json.loads((path / f"data-{rank}.json").read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"resume_from_checkpoint: {path} has no readable stream position for process {rank} "
                        f"({type(err).__name__}); it was not saved by a pretraining_dataset run") from None
    if state.get("rows_served") != rows_done:
        raise UserError(f"resume_from_checkpoint: {path}'s stream position is after {state.get('rows_served')} rows, "
                        f"but its step means {rows_done}; the checkpoint is inconsistent")
    batches.load_state_dict(state)


def objective_state(objective: Any) -> dict[str, Any] | None:
    """An objective's own state for the checkpoint (tensors), if it keeps any between steps."""
    state_dict = getattr(objective, "state_dict", None)
    return state_dict() if state_dict is not None else None


def restore_objective_state(objective: Any, path: Path, rank: int, step: int) -> None:
    """Give an objective back the state checkpoint `path` saved for process `rank` (at `step`)."""
    load_state_dict = getattr(objective, "load_state_dict", None)
    if load_state_dict is None:
        return
    from safetensors.torch import load_file

    file = path / f"objective-{rank}.safetensors"
    load_state_dict(load_file(str(file)) if file.is_file() else {}, step)


# --------------------------------------------------------------------------- final save


@contextmanager
def staged_files(target: Path) -> Iterator[Path]:
    """Yield a temporary folder inside `target`; on success move its files into `target`."""
    target.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".saving-", dir=target))
    try:
        yield tmp
        names = sorted(os.listdir(tmp), key=lambda n: n == RUN_RECORD)  # the record goes last
        for name in names:
            dest = target / name
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            os.replace(tmp / name, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def clear_previous_run(out_dir: Path) -> None:
    """overwrite_output_dir: remove what an earlier run wrote (only tuner's own files)."""
    for name in RUN_FILES:
        (out_dir / name).unlink(missing_ok=True)
    shutil.rmtree(out_dir / CHECKPOINTS, ignore_errors=True)


def save_final(
    model: Any,
    tokenizer: Any,
    cfg: TunerConfig,
    out_dir: Path,
    record: dict[str, Any],
    dtype: Any = None,
) -> None:
    """Save the trained model (or adapter) and tokenizer in HF format, plus the config and run record.

    A fully fine-tuned model is saved in `dtype` (the dtype the base folder stores), so a
    bf16 model in gives a bf16 model out; adapters keep their fp32 weights.
    """
    with staged_files(out_dir) as tmp:
        if dtype is not None and not hasattr(model, "peft_config"):
            model.to(dtype)  # training is over: the model becomes what is saved
        model.save_pretrained(tmp)
        if hasattr(model, "peft_config") and is_classifier(model):
            write_head_config(model, tmp)  # the classifier's labels beside its adapter (merge-lora, score)
        tokenizer.save_pretrained(tmp)
        (tmp / CONFIG_COPY).write_text(dump_config(cfg), encoding="utf-8")
        full_record = {**record, "versions": library_versions()}
        (tmp / RUN_RECORD).write_text(json.dumps(full_record, indent=2), encoding="utf-8")
