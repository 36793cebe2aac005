"""rl: grpo with reward models as rewards (tiny random Llamas, seconds): a reward model trained by
tuner (reward_model: true, LoRA: an adapter folder with head_config.json) as trl.reward_model_path,
and a sequence classifier saved by plain transformers as a folder path in trl.reward_funcs, beside
a reward function. Every completion's rewards in samples.jsonl equal what plain transformers
(+ peft) computes for prompt + completion as TRL 1.16's GRPOTrainer builds it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import make_config, make_tiny_model, read_metrics, write_jsonl

PAIRS = Path(__file__).resolve().parents[2] / "examples" / "data" / "preference_train.jsonl"
REWARDS = '''
def length(prompts, completions, **kwargs):
    return [len(c[0]["content"] if isinstance(c, list) else c) / 50 for c in completions]
'''
PROMPTS = [{"messages": [{"role": "user", "content": f"Say the number {i}."}]} for i in range(2)] + \
          [{"prompt": f"Count to {i}:"} for i in range(2)]


@pytest.fixture(scope="module")
def models(tmp_path_factory, smol_tokenizer_dir):
    """(the policy's base, a tuner-trained LoRA reward model folder, a transformers-saved reward model folder)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, LlamaConfig

    from tuner.train.loop import train

    tmp = tmp_path_factory.mktemp("grpo-rm")
    base = make_tiny_model(tmp / "base", "llama", smol_tokenizer_dir)
    values = dict(base_model=str(base), reward_model=True, datasets=[{"path": str(PAIRS), "type": "chat_template.default"}],
                  dataset_prepared_path=str(tmp / "prepared"), output_dir=str(tmp / "rm_lora"), sequence_len=128,
                  micro_batch_size=4, max_steps=2, learning_rate=5e-3, optimizer="adamw_torch", bf16=False, seed=3,
                  adapter="lora", lora_r=4, lora_alpha=8, lora_target_linear=True)
    train(make_config(tmp, **values))
    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2,
                         pad_token_id=2, num_labels=1, tie_word_embeddings=True)
    full = AutoModelForSequenceClassification.from_config(config)
    full.save_pretrained(tmp / "rm_full")
    AutoTokenizer.from_pretrained(str(smol_tokenizer_dir)).save_pretrained(tmp / "rm_full")
    return base, tmp / "rm_lora", tmp / "rm_full"


def grpo_values(tmp_path: Path, base: Path, **trl) -> dict:
    (tmp_path / "my_rewards.py").write_text(REWARDS)
    data = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    return dict(base_model=str(base), rl="grpo", datasets=[{"path": str(data)}],
                dataset_prepared_path=str(tmp_path / "prepared"), output_dir=str(tmp_path / "out"), sequence_len=128,
                micro_batch_size=4, gradient_accumulation_steps=2, max_steps=2, learning_rate=5e-3,
                optimizer="adamw_torch", bf16=False, seed=3, logging_steps=1, adapter="lora", lora_r=4, lora_alpha=8,
                lora_target_linear=True, trl={"num_generations": 4, "max_completion_length": 6,
                                              "num_completions_to_print": 8, **trl})


def trl_text(tokenizer, prompt, completion: str) -> str:
    """TRL 1.16 GRPOTrainer._calculate_rewards: chat template over prompt + the completion as an assistant
    message, or the prompt string + the completion."""
    if isinstance(prompt, list):
        return tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": completion}], tokenize=False)
    return prompt + completion


def plain_rewards(model, tokenizer, samples) -> list[float]:
    """Each completion alone (no padding), through the model's own forward, logits[0, 0]."""
    out = []
    with torch.no_grad():
        for s in samples:
            ids = tokenizer(trl_text(tokenizer, s["prompt"], s["completion"]), add_special_tokens=False,
                            return_tensors="pt")
            out.append(float(model(**ids).logits[0, 0]))
    return out


def test_reward_models_score_as_plain_transformers(tmp_path, models):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tuner.train.loop import train

    base, rm_lora, rm_full = models
    (tmp_path / "rm_full").symlink_to(rm_full)  # found next to the config
    lora_link = tmp_path / "sub" / "scorer"
    lora_link.parent.mkdir()
    lora_link.symlink_to(rm_lora)
    values = grpo_values(tmp_path, base, reward_funcs=["./rm_full", "my_rewards.length"],
                         reward_model_path="sub/scorer", reward_weights=[1.0, 0.5, 2.0])
    train(make_config(tmp_path, **values))

    samples = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 16 and {s["step"] for s in samples} == {1, 2}  # every completion of both steps
    assert any(isinstance(s["prompt"], list) for s in samples) and any(isinstance(s["prompt"], str) for s in samples)
    assert all(set(s["rewards"]) == {"rm_full", "length", "scorer"} for s in samples)

    full = AutoModelForSequenceClassification.from_pretrained(str(rm_full), dtype=torch.float32).eval()
    tok_full = AutoTokenizer.from_pretrained(str(rm_full))
    head = json.loads((rm_lora / "head_config.json").read_text())
    lora_base = AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=1, dtype=torch.float32,
                                                                   pad_token_id=head["pad_token_id"])
    lora = PeftModel.from_pretrained(lora_base, str(rm_lora)).eval()
    tok_lora = AutoTokenizer.from_pretrained(str(rm_lora))
    expected_full = plain_rewards(full, tok_full, samples)
    expected_lora = plain_rewards(lora, tok_lora, samples)
    assert len(set(round(v, 5) for v in expected_lora)) > 1  # the completions score differently
    for s, f, lo in zip(samples, expected_full, expected_lora):
        assert s["rewards"]["rm_full"] == pytest.approx(f, abs=1e-4)
        assert s["rewards"]["scorer"] == pytest.approx(lo, abs=1e-4)
        assert s["reward"] == pytest.approx(f + 0.5 * s["rewards"]["length"] + 2.0 * lo, abs=1e-4)

    steps = [m for m in read_metrics(tmp_path / "out") if "loss" in m]
    for m, step in zip(steps, (1, 2)):
        mine = [s for s in samples if s["step"] == step]
        for name in ("rm_full", "scorer"):
            assert m[f"rewards/{name}/mean"] == pytest.approx(sum(s["rewards"][name] for s in mine) / 8, abs=1e-5)


def test_a_causal_lm_is_not_a_reward_model(tmp_path, models):
    from tuner.errors import UserError
    from tuner.train.loop import train

    base, _, _ = models
    with pytest.raises(UserError) as err:  # before the policy loads (tests/unit/test_grpo_reward_models.py: the rest)
        train(make_config(tmp_path, **grpo_values(tmp_path, base, reward_funcs=["my_rewards.length"],
                                                  reward_model_path=str(base))))
    assert f"trl.reward_model_path ({base}): {base} is a LlamaForCausalLM; a reward model is a sequence classifier " \
           "with one output" in str(err.value)
