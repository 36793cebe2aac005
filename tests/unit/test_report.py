"""The report keeps training time apart from evaluation and checkpoint time (summary.json,
the summary line, report.png), from metrics.jsonl alone."""

from __future__ import annotations

import json

from tuner.train.report import describe, summarize, time_split, write_report

# Two logging windows of 2 steps each (100 tokens/s over their training time), an evaluation
# and a checkpoint save between them: what tuner.train.loop writes.
RECORDS = [
    {"time": 0.0, "event": "start", "total_steps": 4, "from_step": 0},
    {"time": 2.0, "step": 2, "loss": 2.0, "learning_rate": 1e-3, "trained_tokens": 100, "tokens_per_second": 100.0,
     "trained_tokens_per_second": 50.0, "train_seconds": 2.0},
    {"time": 12.0, "step": 2, "eval_loss": 1.9, "eval_perplexity": 6.7, "eval_seconds": 10.0},
    {"time": 13.0, "step": 2, "event": "checkpoint", "checkpoint": "x", "save_seconds": 1.0},
    {"time": 17.0, "step": 4, "loss": 1.5, "learning_rate": 5e-4, "trained_tokens": 300, "tokens_per_second": 100.0,
     "trained_tokens_per_second": 50.0, "train_seconds": 4.0},
    {"time": 18.0, "event": "end", "saved_to": "out"},
]


def test_time_split_and_summary_line(tmp_path):
    split = time_split(RECORDS)
    assert split == {"train_seconds": 6.0, "tokens_per_second": 100.0, "evaluations": 1, "eval_seconds": 10.0,
                     "checkpoint_saves": 1, "save_seconds": 1.0}
    summary = summarize(RECORDS, tmp_path)
    assert summary["wall_time_seconds"] == 18.0 and summary["train_seconds"] == 6.0
    line = describe(summary)
    assert line.startswith("steps 4 of 4, trained tokens 300")
    assert "training 6.0s at 100 tokens/s, 1 evaluation(s) 10.0s, 1 checkpoint save(s) 1.0s; saved to out" in line


def test_records_without_timing_fields_still_report(tmp_path):
    old = [{k: v for k, v in r.items() if k not in ("train_seconds", "eval_seconds", "save_seconds")} for r in RECORDS]
    assert time_split(old)["train_seconds"] is None
    assert "training" not in describe(summarize(old, tmp_path))


def test_report_png_written(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    summary = write_report(tmp_path)
    assert (tmp_path / "report.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
