"""Metric sinks: `output_dir/metrics.jsonl` (always), the experiment trackers a config asks
for (TensorBoard, Weights & Biases, MLflow; each an optional extra), and the progress bar.

Every record goes to metrics.jsonl first; trackers receive the same numbers (numeric
values, by step). Nothing secret is ever sent or written: trackers read their API keys from
the environment themselves."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from tuner.config.schema import TrainingBlock
from tuner.errors import UserError


class Tracker:
    """An experiment tracker: numbers by step."""

    def log(self, values: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def _require(module: str, key: str, extra: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{key} needs the {extra} package, which is not installed: pip install 'tuner[{extra}]'") from None


class TensorBoardTracker(Tracker):
    def __init__(self, folder: Path):
        _require("tensorboard", "use_tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder))

    def log(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class WandbTracker(Tracker):
    def __init__(self, t: TrainingBlock, out_dir: Path, config: dict[str, Any]):
        wandb = _require("wandb", "wandb_project", "wandb")
        self.run = wandb.init(project=t.wandb_project, entity=t.wandb_entity, name=t.wandb_name, mode=t.wandb_mode,
                              dir=str(out_dir), config=config, reinit="finish_previous")

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowTracker(Tracker):
    def __init__(self, t: TrainingBlock, out_dir: Path, config: dict[str, Any]):
        mlflow = _require("mlflow", "use_mlflow", "mlflow")
        self.mlflow = mlflow
        uri = t.mlflow_tracking_uri or (out_dir / "mlruns").resolve().as_uri()
        if uri.startswith("file:") or "://" not in uri:
            # A local file store, chosen on purpose: recent MLflow wants an explicit opt-in for it.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(t.mlflow_experiment_name or "tuner")
        self.run = mlflow.start_run(run_name=t.mlflow_run_name)
        mlflow.log_params({k: json.dumps(v) if not isinstance(v, str) else v for k, v in config.items()})

    def log(self, values: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics(values, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


def open_trackers(t: TrainingBlock, out_dir: Path, config: dict[str, Any]) -> list[Tracker]:
    """The trackers the config asks for (call on the main process only)."""
    wanted = [
        ("use_tensorboard", t.use_tensorboard, lambda: TensorBoardTracker(out_dir / "tensorboard")),
        ("wandb_project", bool(t.wandb_project), lambda: WandbTracker(t, out_dir, config)),
        ("use_mlflow", t.use_mlflow, lambda: MlflowTracker(t, out_dir, config)),
    ]
    trackers: list[Tracker] = []
    for key, on, start in wanted:
        if not on:
            continue
        try:
            trackers.append(start())
        except UserError:
            raise
        except Exception as err:  # noqa: BLE001 - each tracker library has its own errors
            text = " ".join(str(err).split())[:300]
            raise UserError(f"{key}: the tracker could not start: {type(err).__name__}: {text}") from None
    return trackers


class MetricsLog:
    """Appends one JSON object per record to metrics.jsonl (flushed at once) and forwards
    its numbers to the trackers."""

    def __init__(self, path: Path, enabled: bool = True, keep_until_step: int | None = None,
                 trackers: list[Tracker] | None = None):
        """`keep_until_step`: on resume, drop records of steps after the checkpoint (they are redone)."""
        self.path = path
        self.enabled = enabled
        self.trackers = trackers or []
        if enabled and path.exists():
            kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and keep_until_step and json.loads(line).get("step", 0) <= keep_until_step]
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
            tmp.replace(path)
        self._fh = open(path, "a", encoding="utf-8") if enabled else None

    def write(self, record: dict[str, Any]) -> None:
        if self._fh is None:
            return
        self._fh.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")
        self._fh.flush()
        numbers = {k: float(v) for k, v in record.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if "step" in record and numbers:
            for tracker in self.trackers:
                tracker.log(numbers, int(record["step"]))

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []


class Progress:
    """A tqdm bar over optimizer steps showing loss, learning rate and tokens/s (ETA is tqdm's)."""

    def __init__(self, total: int, initial: int = 0, enabled: bool = True):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True, file=sys.stderr)
        self.values: dict[str, str] = {}

    def note(self, **values: Any) -> None:
        """Values shown after the bar (loss, lr, tokens/s, eval loss)."""
        self.values.update({k: _fmt(v) for k, v in values.items()})
        self.bar.set_postfix(self.values, refresh=False)

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


class LogWindow:
    """The steps since the last logged one: their totals, their real tokens, and the time
    spent training them. Evaluation and checkpoint saves are timed on their own and never
    count as training time, so tokens/s is the training throughput."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, float] = {}
        self.tokens = 0.0
        self.seconds = 0.0

    def add(self, sums: dict[str, float], counts: dict[str, float], loss: float, tokens: float, seconds: float) -> None:
        """One step. A step with a non-finite loss (skipped under nan_policy: skip) adds its
        tokens and time but not its sums and counts."""
        if math.isfinite(loss):
            for into, values in ((self.sums, sums), (self.counts, counts)):
                for k, v in values.items():
                    into[k] = into.get(k, 0.0) + v
        self.tokens += tokens
        self.seconds += seconds

    def rates(self, count_name: str) -> dict[str, float]:
        seconds = max(self.seconds, 1e-9)
        return {"tokens_per_second": self.tokens / seconds,
                f"{count_name}_per_second": self.counts.get(count_name, 0.0) / seconds}


class RunLog:
    """A run's outputs while it trains: metrics.jsonl, the trackers and the progress bar
    (written by the main process only). `close` may be called more than once."""

    def __init__(self, metrics: MetricsLog, progress: Progress):
        self.metrics = metrics
        self.progress = progress

    @classmethod
    def open(cls, cfg: Any, out_dir: Path, total_steps: int, from_step: int, enabled: bool) -> RunLog:
        """`cfg` is the TunerConfig (its flat form goes to the trackers)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        trackers = open_trackers(cfg.training, out_dir, cfg.to_flat()) if enabled else []
        metrics = MetricsLog(out_dir / "metrics.jsonl", enabled=enabled, keep_until_step=from_step, trackers=trackers)
        metrics.write({"event": "start", "total_steps": total_steps, "from_step": from_step})
        return cls(metrics, Progress(total_steps, initial=from_step, enabled=enabled))

    def write(self, record: dict[str, Any]) -> None:
        self.metrics.write(record)

    def close(self) -> None:
        self.progress.close()
        self.metrics.close()
