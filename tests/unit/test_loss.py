"""Loss normalisation: sum of token losses / trained tokens of the whole optimizer step."""

from __future__ import annotations

import pytest
import torch

from tuner.data.pack import pad_batch
from tuner.train.objectives.sft import SFT
from tuner.train.step import accumulate_gradients
from tuner.train.loss import CausalLMLoss, shifted_loss_sum, trained_token_count


def tiny_llama(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(cfg).eval()  # eval: no dropout, so runs are comparable


def rows(seed=1):
    """8 rows; trained-token counts differ 12x between the first and last micro-batches of 2."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(8):
        prompt, answer = (30, 2) if i < 4 else (4, 24)
        ids = torch.randint(3, 97, (prompt + answer,), generator=g).tolist()
        labels = [-100] * prompt + ids[prompt:]
        out.append((ids, labels))
    return out


def grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def accumulate(model, batches, accelerator):
    """(summed loss, trained tokens) of one SFT step's micro-batches, after its backward."""
    totals = accumulate_gradients(model, batches, accelerator, SFT())
    return totals.sums["loss"], totals.counts["trained_tokens"]


def run(micro_batch, data, accelerator):
    model = CausalLMLoss(tiny_llama())
    batches = [
        pad_batch([r[0] for r in data[i : i + micro_batch]], [r[1] for r in data[i : i + micro_batch]], 0)
        for i in range(0, len(data), micro_batch)
    ]
    loss_sum, trained = accumulate(model, batches, accelerator)
    return grads(model), loss_sum / trained


@pytest.fixture
def accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=True)


def test_accumulation_equals_one_big_batch(accelerator):
    data = rows()
    counts = [sum(l != -100 for l in lab[1:]) for _, lab in data]
    assert max(counts) >= 5 * min(counts)
    g_acc, loss_acc = run(2, data, accelerator)  # 4 micro-batches of 2
    g_big, loss_big = run(8, data, accelerator)  # 1 micro-batch of 8
    assert loss_acc == pytest.approx(loss_big, rel=1e-6)
    assert torch.allclose(g_acc, g_big, atol=1e-6, rtol=1e-5), (g_acc - g_big).abs().max()


def test_mean_of_means_control_differs(accelerator):
    """The naive per-micro-batch mean, averaged, gives different gradients: the test above can fail."""
    data = rows()
    g_big, _ = run(8, data, accelerator)
    model = CausalLMLoss(tiny_llama())
    for i in range(0, 8, 2):
        batch = pad_batch([r[0] for r in data[i : i + 2]], [r[1] for r in data[i : i + 2]], 0)
        mean = model(**batch) / trained_token_count(batch["labels"])
        (mean / 4).backward()
    assert (grads(model) - g_big).abs().max() > 1e-4


def test_shifted_loss_matches_transformers():
    model = tiny_llama()
    ids, labels = rows()[0]
    batch = pad_batch([ids], [labels], 0)
    out = model(input_ids=batch["input_ids"], labels=batch["labels"])
    ours = shifted_loss_sum(out.logits, batch["labels"]) / trained_token_count(batch["labels"])
    assert ours.item() == pytest.approx(out.loss.item(), rel=1e-5)


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "gemma", "gemma2"])
def test_head_only_on_trained_positions_equals_full_logits(family, monkeypatch):
    """Values and gradients, fp32, to 1e-5, with chunks smaller than the trained positions."""
    import tuner.train.loss as loss_mod
    from transformers import AutoModelForCausalLM, Gemma2Config, GemmaConfig, LlamaConfig, MistralConfig, Qwen2Config

    common = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    config = {
        "llama": lambda: LlamaConfig(**common), "qwen2": lambda: Qwen2Config(**common),
        "mistral": lambda: MistralConfig(**common), "gemma": lambda: GemmaConfig(**common, head_dim=8),
        "gemma2": lambda: Gemma2Config(**common, head_dim=8, final_logit_softcapping=5.0),
    }[family]()
    monkeypatch.setattr(loss_mod, "MIN_CHUNK", 1)
    monkeypatch.setattr(loss_mod, "LOSS_CHUNK_BYTES", 7 * 12 * 97)  # 7 positions a chunk: several per batch
    data = rows()
    batch = pad_batch([r[0] for r in data], [r[1] for r in data], 0)
    results = []
    for gathered in (True, False):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config).eval()
        wrapped = CausalLMLoss(model, gathered_head=gathered)
        assert wrapped.gathered_head is gathered
        value = wrapped(**batch)
        value.backward()
        results.append((value.detach(), grads(model)))
    (v1, g1), (v2, g2) = results
    assert torch.allclose(v1, v2, rtol=1e-5, atol=1e-5)
    assert torch.allclose(g1, g2, rtol=1e-5, atol=1e-5), (g1 - g2).abs().max()
    assert CausalLMLoss(AutoModelForCausalLM.from_config(config)).gathered_head  # the default for this family


def test_flattened_batches_equal_padded_batches(accelerator):
    """batch_flattening: each micro-batch's rows end to end in one row give the padded
    batches' loss and gradients (fp32, 1e-5) without a single pad slot; a control whose
    positions run on across the rows differs."""
    from datasets import Dataset

    from tuner.data.pack import Batches

    data = rows()
    ds = Dataset.from_dict({"input_ids": [r[0] for r in data], "labels": [r[1] for r in data]})
    units = [[0, 5], [1, 6], [2, 7], [3, 4]]  # rows of unequal length in every micro-batch
    results = {}
    for name, flatten in (("padded", False), ("flat", True)):
        batches = [Batches(ds, 0, 128, flatten=flatten).batch(u) for u in units]
        model = CausalLMLoss(tiny_llama())
        loss_sum, trained = accumulate(model, batches, accelerator)
        results[name] = (loss_sum / trained, grads(model), batches)
    (l1, g1, padded), (l2, g2, flat) = results["padded"], results["flat"]
    assert all(b["input_ids"].shape[0] == 1 and b["input_ids"].shape[1] == sum(len(data[i][0]) for i in u)
               for b, u in zip(flat, units))
    assert sum(b["input_ids"].numel() for b in padded) > sum(b["input_ids"].numel() for b in flat)
    assert float(l1) == pytest.approx(float(l2), rel=1e-5)
    assert torch.allclose(g1, g2, rtol=1e-5, atol=1e-5), (g1 - g2).abs().max()

    leaky = [{**b, "position_ids": torch.arange(b["input_ids"].shape[1])[None]} for b in flat]
    model = CausalLMLoss(tiny_llama())
    loss_sum, trained = accumulate(model, leaky, accelerator)
    assert not torch.allclose(grads(model), g1, rtol=1e-5, atol=1e-5)
