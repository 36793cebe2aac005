"""`tuner inspect`: rows shown token by token with their training state; statistics that
match a direct count of the prepared rows."""

from __future__ import annotations

import re
import subprocess
import sys

from helpers import make_tiny_model, write_config, write_jsonl
from tuner.data.inspect import percentile


def chat_rows(n):
    return [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": "The answer is " + " and ".join([str(2 * i)] * (1 + i % 4)) + "."}]}
            for i in range(n)]


def test_inspect_cli_matches_a_direct_count(tmp_path, smol_tokenizer_dir):
    from tuner.config import load_config
    from tuner.data.pipeline import prepare
    from tuner.models.load import load_tokenizer, resolve_base, tokenizer_files

    base = make_tiny_model(tmp_path / "base", "llama", smol_tokenizer_dir)  # a model folder (config.json)
    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows(30) + [{"messages": [{"role": "user", "content": "?"}]}])
    cfg_path = write_config(
        tmp_path / "c.yml", base_model=str(base), datasets=[{"path": str(data), "type": "chat_template"}],
        dataset_prepared_path=str(tmp_path / "prepared"), learning_rate=1e-4, num_epochs=1, micro_batch_size=4,
        sequence_len=128,
    )
    res = subprocess.run([sys.executable, "-m", "tuner", "inspect", str(cfg_path), "--rows", "2"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "\033[" not in out  # piped: plain markers, no colour codes
    assert out.count("--- row ") == 2
    assert "[The]|[ answer]" in out and "|<|im_end|>|\\n|<|im_start|>|user|" in out

    # Direct count from the prepared rows.
    cfg = load_config(cfg_path)
    base = resolve_base(cfg.model)
    rows = prepare(cfg, load_tokenizer(cfg.model, base), tokenizer_files(cfg.model, base)).train
    lengths = sorted(len(x) for x in rows["input_ids"])
    trained = sum(sum(1 for i, l in enumerate(lab) if i and l != -100) for lab in rows["labels"])
    tokens = sum(lengths)
    assert f"rows: 30, tokens: {tokens:,}, trained tokens: {trained:,} ({trained / tokens:.1%} of all)" in out
    assert f"min {lengths[0]}, median {percentile(lengths, 50)}, p95 {percentile(lengths, 95)}, max {lengths[-1]}" in out
    assert f"{1 - tokens / (30 * 128):.1%} padding every row to sequence_len 128" in out
    assert "31 rows read, 30 kept, dropped 1 with nothing to train (rows 31)" in out
    hist = [int(m.group(1)) for m in re.finditer(r"^\s+\d+-\d+\s+(\d+)\s", out, re.M)]
    assert sum(hist) == 30
    # The trained text of the first row is the assistant's answer and its end token.
    first = re.search(r"trained text:\n\s+'(.*)'", out).group(1)
    assert first == "The answer is 0.<|im_end|>"


def test_percentile():
    assert percentile([1, 2, 3, 4], 50) == 2 and percentile([1, 2, 3, 4], 95) == 4 and percentile([7], 50) == 7
