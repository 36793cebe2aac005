"""Loss normalisation: sum of token losses / trained tokens of the whole optimizer step."""

from __future__ import annotations

import pytest
import torch

from tuner.data.pack import pad_batch
from tuner.train.loop import accumulate_gradients
from tuner.train.loss import batch_loss_sum, shifted_loss_sum, trained_token_count


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


def run(micro_batch, data, accelerator):
    model = tiny_llama()
    batches = [
        pad_batch([r[0] for r in data[i : i + micro_batch]], [r[1] for r in data[i : i + micro_batch]], 0)
        for i in range(0, len(data), micro_batch)
    ]
    loss_sum, trained = accumulate_gradients(model, batches, accelerator)
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
    model = tiny_llama()
    for i in range(0, 8, 2):
        batch = pad_batch([r[0] for r in data[i : i + 2]], [r[1] for r in data[i : i + 2]], 0)
        mean = batch_loss_sum(model, batch) / trained_token_count(batch["labels"])
        (mean / 4).backward()
    assert (grads(model) - g_big).abs().max() > 1e-4


def test_shifted_loss_matches_transformers():
    model = tiny_llama()
    ids, labels = rows()[0]
    batch = pad_batch([ids], [labels], 0)
    out = model(input_ids=batch["input_ids"], labels=batch["labels"])
    ours = shifted_loss_sum(out.logits, batch["labels"]) / trained_token_count(batch["labels"])
    assert ours.item() == pytest.approx(out.loss.item(), rel=1e-5)
