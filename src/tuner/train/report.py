"""The end-of-run report: `output_dir/report.png` (losses, learning rate, training
throughput, and where the time went: seconds per training step beside each evaluation's and
checkpoint save's duration) and a short summary (`summary.json`), both computed from
`metrics.jsonl` alone, so `tuner report OUTPUT_DIR` can redraw them at any time, also while a
run is still going.

Throughput is over training time only: a step record's tokens/s divides the tokens of its
logging window by `train_seconds`, the time its steps took; evaluations (`eval_seconds`) and
checkpoint saves (`save_seconds`) are timed as records of their own.

What tokens/s counts: the real (non-padding) tokens that went through the model, trained or not
(SFT: every token of the rows, prompts included; rl: grpo: each completion's prompt + completion
tokens, once per completion, and its step time includes generation). What was trained is
counted apart: `trained_tokens` (SFT: the tokens with labels; rl: grpo: the completion tokens,
also as `completion_tokens` with `completion_tokens_per_second`; GRPO's prompts never train).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuner.errors import UserError

SUMMARY = "summary.json"
REPORT = "report.png"


def read_metrics(out_dir: Path) -> list[dict[str, Any]]:
    path = out_dir / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{out_dir} has no metrics.jsonl: not a tuner output folder, or training has not started")
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line being written right now
    return records


def time_split(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Training time and throughput apart from evaluation and checkpoint time (None where the
    records predate these fields)."""
    steps = [r for r in records if "loss" in r and "train_seconds" in r]
    evals = [r["eval_seconds"] for r in records if "eval_seconds" in r]
    saves = [r["save_seconds"] for r in records if "save_seconds" in r]
    train = sum(r["train_seconds"] for r in steps)
    tokens = sum(r.get("tokens_per_second", 0.0) * r["train_seconds"] for r in steps)
    return {
        "train_seconds": round(train, 2) if steps else None,
        "tokens_per_second": round(tokens / train, 1) if steps and train > 0 else None,
        "evaluations": len(evals),
        "eval_seconds": round(sum(evals), 2),
        "checkpoint_saves": len(saves),
        "save_seconds": round(sum(saves), 2),
    }


def grpo_split(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """rl: grpo: the trained (completion) tokens, their rate over step time, and the generation's share."""
    timed = [r for r in steps if "train_seconds" in r]
    seconds = sum(r["train_seconds"] for r in timed)
    trained = sum(r.get("completion_tokens_per_second", 0.0) * r["train_seconds"] for r in timed)
    return {"completion_tokens": steps[-1]["completion_tokens"],
            "completion_tokens_per_second": round(trained / seconds, 1) if seconds > 0 else None,
            "generation_seconds": round(sum(r.get("generation_seconds", 0.0) for r in steps), 2)}


def summarize(records: list[dict[str, Any]], out_dir: Path) -> dict[str, Any]:
    steps = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_loss" in r]
    start = next((r for r in records if r.get("event") == "start"), None)
    end = next((r for r in reversed(records) if r.get("event") == "end"), None)
    times = [r["time"] for r in records if "time" in r]
    last = steps[-1] if steps else {}
    return {
        "steps": steps[-1]["step"] if steps else 0,
        "total_steps": start.get("total_steps") if start else None,
        "trained_tokens": last.get("trained_tokens", last.get("completion_tokens", 0)),  # GRPO: completion tokens
        **(grpo_split(steps) if "completion_tokens" in last else {}),
        **({"pairs": steps[-1]["pairs"]} if steps and "pairs" in steps[-1] else {}),
        **({"examples": steps[-1]["examples"]} if steps and "examples" in steps[-1] else {}),
        "wall_time_seconds": round(times[-1] - (start["time"] if start else times[0]), 1) if times else 0.0,
        "final_train_loss": steps[-1]["loss"] if steps else None,
        "final_eval_loss": evals[-1]["eval_loss"] if evals else None,
        "best_eval_loss": min(r["eval_loss"] for r in evals) if evals else None,
        "finished": end is not None,
        "saved_to": end.get("saved_to") if end else None,
        "output_dir": str(out_dir),
        **time_split(records),
    }


def describe(summary: dict[str, Any]) -> str:
    def fmt(x: Any) -> str:
        return f"{x:.4f}" if isinstance(x, float) else "-" if x is None else str(x)

    total = f" of {summary['total_steps']}" if summary["total_steps"] else ""
    state = f"saved to {summary['saved_to']}" if summary["finished"] else "not finished"
    timing = ""
    if summary.get("train_seconds") is not None:
        timing = f"; training {summary['train_seconds']:.1f}s"
        rate_of = lambda r: f"{r:,.0f}" if r >= 100 else f"{r:.3g}"
        if summary.get("tokens_per_second") is not None:
            timing += f" at {rate_of(summary['tokens_per_second'])} tokens/s"
        if summary.get("completion_tokens_per_second") is not None:  # rl: grpo
            timing += (f" (prompt + completion), {rate_of(summary['completion_tokens_per_second'])} completion "
                       f"tokens/s, generation {summary['generation_seconds']:.1f}s of it")
        if summary.get("evaluations"):
            timing += f", {summary['evaluations']} evaluation(s) {summary['eval_seconds']:.1f}s"
        if summary.get("checkpoint_saves"):
            timing += f", {summary['checkpoint_saves']} checkpoint save(s) {summary['save_seconds']:.1f}s"
    counted = next((f"{name} {summary[name]:,}" for name in ("pairs", "examples") if name in summary),
                   f"trained tokens {summary['trained_tokens']:,}{' (completions)' if 'completion_tokens' in summary else ''}")
    return (
        f"steps {summary['steps']}{total}, {counted}, "
        f"wall time {summary['wall_time_seconds']:.0f}s, final loss {fmt(summary['final_train_loss'])}, "
        f"final eval loss {fmt(summary['final_eval_loss'])}, best eval loss {fmt(summary['best_eval_loss'])}"
        f"{timing}; {state}"
    )


def draw(records: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    steps = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_loss" in r]
    rewards = any("rewards/margins" in r for r in steps)  # preference training: its own panel
    fig, axes = plt.subplots(5 if rewards else 4, 1, figsize=(8, 11 if rewards else 9), sharex=True)
    axes[0].plot([r["step"] for r in steps], [r["loss"] for r in steps], label="train loss")
    if evals:
        axes[0].plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="eval loss")
    axes[0].set_ylabel("loss")
    axes[0].legend()
    axes[1].plot([r["step"] for r in steps], [r.get("learning_rate", 0) for r in steps], color="tab:green")
    axes[1].set_ylabel("learning rate")
    axes[2].plot([r["step"] for r in steps], [r.get("tokens_per_second", 0) for r in steps], color="tab:red", label="tokens/s")
    counted = next((k for k in ("trained_tokens_per_second", "pairs_per_second", "examples_per_second",
                                "completion_tokens_per_second")
                    if any(k in r for r in steps)), "trained_tokens_per_second")
    axes[2].plot([r["step"] for r in steps], [r.get(counted, 0) for r in steps],
                 color="tab:orange", label=counted.replace("_per_second", "/s").replace("_", " "))
    axes[2].set_ylabel("tokens / s\n(training time)")
    axes[2].legend(fontsize="small")
    draw_durations(axes[3], records)
    if rewards:
        draw_rewards(axes[4], steps, evals)
    axes[-1].set_xlabel("step")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def draw_rewards(ax: Any, steps: list[dict[str, Any]], evals: list[dict[str, Any]]) -> None:
    """Preference training: the reward margin (chosen - rejected) and the share of pairs whose
    chosen reward is the higher, for training steps and evaluations."""
    for records, prefix, style in ((steps, "", "-"), (evals, "eval_", "o-")):
        for key, colour in (("rewards/margins", "tab:blue"), ("rewards/accuracies", "tab:purple")):
            points = [(r["step"], r[prefix + key]) for r in records if prefix + key in r]
            if points:
                ax.plot(*zip(*points), style, color=colour, label=f"{'eval ' if prefix else ''}{key.split('/')[1]}")
    ax.set_ylabel("rewards")
    ax.legend(fontsize="small")


def draw_durations(ax: Any, records: list[dict[str, Any]]) -> None:
    """Seconds per training step (each logging window's train_seconds over its steps) as a line;
    each evaluation and checkpoint save as a bar of its own duration at the step it followed."""
    previous, xs, per_step = 0, [], []
    for r in records:
        if r.get("event") == "start":
            previous = r.get("from_step", 0)  # a resumed run's first window starts at its checkpoint
        elif "loss" in r and "train_seconds" in r:
            xs.append(r["step"])
            per_step.append(r["train_seconds"] / max(r["step"] - previous, 1))
            previous = r["step"]
    if xs:
        ax.plot(xs, per_step, color="tab:blue", label="training, s per step")
    evals = [(r["step"], r["eval_seconds"]) for r in records if "eval_seconds" in r]
    saves = [(r["step"], r["save_seconds"]) for r in records if "save_seconds" in r]
    for marks, width, color, label in ((evals, 0.4, "tab:purple", "evaluation, s"),
                                       (saves, -0.4, "tab:gray", "checkpoint save, s")):
        if marks:
            bars = ax.bar([s for s, _ in marks], [v for _, v in marks], width=width, align="edge", color=color,
                          alpha=0.6, label=label)
            ax.bar_label(bars, labels=[f"{v:.3g}" for _, v in marks], fontsize="x-small")
    ax.set_ylabel("seconds")
    if xs or evals or saves:
        ax.legend(fontsize="small")


def write_report(out_dir: Path) -> dict[str, Any]:
    """Draw report.png and write summary.json from metrics.jsonl; return the summary."""
    records = read_metrics(out_dir)
    summary = summarize(records, out_dir)
    if any("loss" in r for r in records):
        draw(records, out_dir / REPORT, f"tuner: {out_dir.name}")
    (out_dir / SUMMARY).write_text(json.dumps(summary, indent=2))
    return summary
