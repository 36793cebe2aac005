"""rl: grpo's accounting on a tiny random Llama (seconds): what tokens/s and the run summary count.
The trained tokens are the completion tokens (prompts never train); tokens/s counts what the
training forward ran, each completion's prompt + completion tokens."""

from __future__ import annotations

import json

import pytest
from helpers import make_config, make_tiny_model, read_metrics, write_jsonl

REWARDS = "def length(prompts, completions, **kw):\n    return [len(c) / 10 for c in completions]\n"
PROMPTS = [{"prompt": f"Count to {i}:"} for i in range(1, 7)]


@pytest.fixture(scope="module")
def base(tmp_path_factory, smol_tokenizer_dir):
    return make_tiny_model(tmp_path_factory.mktemp("tiny-grpo-counts") / "base", "llama", smol_tokenizer_dir)


def test_tokens_per_second_and_summary_count_completions_as_trained(tmp_path, base):
    from transformers import AutoTokenizer

    from tuner.train.loop import train
    from tuner.train.report import describe

    tok = AutoTokenizer.from_pretrained(str(base))
    lengths = {len(tok(r["prompt"])["input_ids"]) for r in PROMPTS}
    assert len(lengths) == 1  # every prompt has the same length, so a step's prompt tokens are known
    prompt_len = lengths.pop()
    (tmp_path / "rw.py").write_text(REWARDS)
    data = write_jsonl(tmp_path / "p.jsonl", PROMPTS)
    cfg = make_config(tmp_path, base_model=str(base), rl="grpo", datasets=[{"path": str(data)}],
                      dataset_prepared_path=str(tmp_path / "prepared"), output_dir=str(tmp_path / "out"),
                      sequence_len=64, micro_batch_size=4, gradient_accumulation_steps=2, max_steps=3,
                      learning_rate=1e-3, optimizer="adamw_torch", bf16=False, seed=5, logging_steps=1,
                      adapter="lora", lora_r=4, lora_alpha=8, lora_target_linear=True,
                      trl={"num_generations": 4, "max_completion_length": 10, "reward_funcs": ["rw.length"]})
    result = train(cfg)

    steps = [m for m in read_metrics(tmp_path / "out") if "loss" in m]
    completion_tokens = [8 * m["completions/mean_length"] for m in steps]  # 8 completions a step, none masked
    assert [m["completion_tokens"] for m in steps] == pytest.approx(
        [sum(completion_tokens[: i + 1]) for i in range(3)])  # the trained tokens, cumulative
    for m, trained in zip(steps, completion_tokens):
        assert m["completion_tokens_per_second"] * m["train_seconds"] == pytest.approx(trained)
        # what the training forward ran: each completion's prompt and its completion (no padding)
        assert m["tokens_per_second"] * m["train_seconds"] == pytest.approx(8 * prompt_len + trained)
    assert result.trained_tokens == pytest.approx(sum(completion_tokens))

    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    seconds = sum(m["train_seconds"] for m in steps)
    assert summary["trained_tokens"] == summary["completion_tokens"] == result.trained_tokens
    assert summary["tokens_per_second"] == pytest.approx((24 * prompt_len + sum(completion_tokens)) / seconds, rel=1e-3)
    assert summary["completion_tokens_per_second"] == pytest.approx(sum(completion_tokens) / seconds, rel=1e-3)
    assert summary["generation_seconds"] == pytest.approx(sum(m["generation_seconds"] for m in steps), abs=0.01)
    assert 0 < summary["generation_seconds"] < summary["train_seconds"]
    text = describe(summary)
    assert f"trained tokens {result.trained_tokens:,} (completions)" in text and "completion tokens/s" in text
