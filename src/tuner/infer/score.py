"""`tuner score`: a trained reward model's rewards, or a trained classifier's predictions, for the
rows of a JSONL file.

The rows are encoded exactly as training encoded the config's first dataset (its `type`, chat
template and length policy: tuner.data.pipeline.encode_rows), and read by the same head code as
training's evaluation (tuner.models.heads.sequence_logits), so a pair scores here as it scored in
eval. Reward models: pair rows print both rewards and, at the end, the pairwise accuracy; a row
with one conversation (`messages`) prints its reward. Classifiers: each text's predicted class
and probability and, when rows carry labels, the accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuner.config.schema import TunerConfig
from tuner.data.formats import FieldError
from tuner.data.pipeline import encode_rows
from tuner.data.tokenize import KEPT
from tuner.errors import UserError
from tuner.models.heads import load_trained, sequence_logits

BATCH = 8


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise UserError(f"--input: cannot read {path}: {err.strerror}") from None
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as err:
            raise UserError(f"--input: {path} line {n} is not JSON: {err}") from None
        if not isinstance(row, dict):
            raise UserError(f"--input: {path} line {n} must be a JSON object")
        rows.append(row)
    if not rows:
        raise UserError(f"--input: {path} has no rows")
    return rows


def _scores(model: Any, docs: list[list[int]], pad: int) -> list[list[float]]:
    """Head outputs of each token sequence (packed padding-free, BATCH at a time)."""
    import torch

    out: list[list[float]] = []
    for start in range(0, len(docs), BATCH):
        chunk = docs[start : start + BATCH]
        ids = torch.tensor([[t for d in chunk for t in d]])
        positions = torch.tensor([[p for d in chunk for p in range(len(d))]])
        sequence = torch.tensor([[i for i, d in enumerate(chunk) for _ in d]])
        with torch.no_grad():
            logits = sequence_logits(model, {"input_ids": ids, "position_ids": positions}, sequence, len(chunk))
        out += logits.double().tolist()
    return out


def _encoded(cfg: TunerConfig, tokenizer: Any, ds: Any, rows: list[dict[str, Any]], path: Path) -> list[dict[str, Any]]:
    encoded = encode_rows(cfg, tokenizer, ds, rows)
    for n, row in enumerate(encoded, 1):
        if isinstance(row, FieldError):
            raise UserError(f"--input: {path} row {n}: {row} (type {ds.kind})")
        if row["status"] != KEPT:
            raise UserError(f"--input: {path} row {n}: longer than sequence_len {cfg.data.sequence_len} or empty "
                            f"(excess_length_strategy: {cfg.data.excess_length_strategy})")
    return encoded


def score(cfg: TunerConfig, input_file: Path, model_dir: Path | None = None) -> list[str]:
    """The lines `tuner score` prints."""
    folder = model_dir or Path(cfg.training.output_dir)
    if not (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
        raise UserError(f"--model-dir: {folder} holds no trained model; train first (or pass --model-dir)")
    model, tokenizer = load_trained(folder)
    model.eval()
    rows = read_jsonl(input_file)
    ds = cfg.data.datasets[0]
    pad = tokenizer.pad_token_id
    if cfg.objective == "reward":
        return _rewards(cfg, model, tokenizer, ds, rows, input_file, pad)
    if cfg.objective != "classification":
        raise UserError("tuner score reads reward models (reward_model: true) and classifiers (type: classification); "
                        f"this config trains {cfg.objective}")
    return _classes(cfg, model, tokenizer, ds, rows, input_file, pad)


def _rewards(cfg, model, tokenizer, ds, rows, path, pad) -> list[str]:
    pairs = [r for r in rows if ds.field_chosen in r and ds.field_rejected in r]
    if pairs and len(pairs) != len(rows):
        raise UserError(f"--input: {path} mixes pairs ({ds.field_chosen}/{ds.field_rejected}) and single "
                        "conversations; score them in two files")
    if not pairs:  # one conversation per row: scored as the chosen side of a pair with itself
        single = ds.model_copy(update={"type": "bradley_terry.chat_template"})
        single._rl = "reward"
        conv = [{ds.field_chosen: r.get(ds.field_messages), ds.field_rejected: r.get(ds.field_messages),
                 "system": r.get("system")} for r in rows]
        encoded = _encoded(cfg, tokenizer, single, conv, path)
        rewards = _scores(model, [e["chosen_input_ids"] for e in encoded], pad)
        return [f"row {n}: reward {r[0]:.6f}" for n, r in enumerate(rewards, 1)]
    encoded = _encoded(cfg, tokenizer, ds, rows, path)
    docs = [e[f"{side}_input_ids"] for e in encoded for side in ("chosen", "rejected")]
    values = [s[0] for s in _scores(model, docs, pad)]
    lines, right = [], 0
    for n in range(len(encoded)):
        c, r = values[2 * n], values[2 * n + 1]
        right += c > r
        lines.append(f"row {n + 1}: chosen {c:.6f}  rejected {r:.6f}  margin {c - r:+.6f}")
    lines.append(f"accuracy {right / len(encoded):.4f} ({right} of {len(encoded)} pairs: chosen > rejected)")
    return lines


def _classes(cfg, model, tokenizer, ds, rows, path, pad) -> list[str]:
    import torch

    from tuner.data.formats.classification import LabelMap

    labelled = all(ds.field_label in r for r in rows)
    if not labelled:
        rows = [{**r, ds.field_label: 0} for r in rows]  # the label is not read for a prediction
    encoded = _encoded(cfg, tokenizer, ds, rows, path)
    config = (model.get_base_model() if hasattr(model, "get_base_model") else model).config
    logits = torch.tensor(_scores(model, [e["input_ids"] for e in encoded], pad))
    lines = []
    if config.num_labels == 1:
        for n, value in enumerate(logits[:, 0].tolist(), 1):
            lines.append(f"row {n}: {value:.6f}")
        return lines
    id2label = {int(i): n for i, n in config.id2label.items()}
    labels = LabelMap(id2label)
    probs = logits.softmax(-1)
    right = 0
    for n, (e, p) in enumerate(zip(encoded, probs), 1):
        k = int(p.argmax())
        line = f"row {n}: {id2label[k]} ({float(p[k]):.4f})"
        if labelled:
            want = labels.target(e["label"], f"--input row {n}: ")
            right += want == k
            line += f"  label {id2label[want]}"
        lines.append(line)
    if labelled:
        lines.append(f"accuracy {right / len(encoded):.4f} ({right} of {len(encoded)})")
    return lines
