"""Packed rows through the real SmolLM2 give each document exactly the losses it gets alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tuner.data.pack import packed_batch
from tuner.data.tokenize import IGNORE

pytestmark = pytest.mark.smollm2

DOCS = [
    "The quick brown fox jumps over the lazy dog while the farmer watches from the gate.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "def add(a, b):\n    return a + b",
    "Paris is the capital of France, and Berlin is the capital of Germany; both are large cities.",
    "Bananas are yellow.",
    "In 1969 two astronauts walked on the Moon for the first time in history.",
]


def per_token_losses(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits[:-1].float(), ids[1:], reduction="none")


# flex_attention: transformers builds its document mask from the packed position_ids. The check is
# forward only (torch has no CPU backward for flex attention), and inductor compiles its CPU kernel
# for minutes from a cold cache, so that variant runs with `-m extra`, outside make test's budget.
@pytest.mark.parametrize("attn", ["eager", "sdpa", pytest.param("flex_attention", marks=pytest.mark.extra)])
def test_packed_losses_equal_each_document_alone(smol_model_dir, smol_tokenizer, attn):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smol_model_dir, dtype=torch.float32, attn_implementation=attn).eval()
    docs = [smol_tokenizer(t)["input_ids"] for t in DOCS]
    rows = [docs[:3], docs[3:]]  # two packed rows, three documents of unequal length in each
    assert all(len({len(d) for d in row}) == 3 for row in rows)
    batch = packed_batch([[(d, d) for d in row] for row in rows], smol_tokenizer.pad_token_id)

    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        no_restart = torch.arange(batch["input_ids"].shape[1]).expand_as(batch["input_ids"])
        control = model(input_ids=batch["input_ids"], position_ids=no_restart, use_cache=False).logits
        worst, worst_control = 0.0, 0.0
        for r, row in enumerate(rows):
            at = 0
            for d in row:
                ids = torch.tensor(d)
                alone = per_token_losses(model(input_ids=ids[None], use_cache=False).logits[0], ids)
                span = slice(at, at + len(d))
                worst = max(worst, float((per_token_losses(packed[r, span], ids) - alone).abs().max()))
                worst_control = max(worst_control, float((per_token_losses(control[r, span], ids) - alone).abs().max()))
                at += len(d)
    assert worst <= 1e-4, worst
    assert worst_control > 1e-4, worst_control  # without restarting positions, documents leak into each other
    # The collated labels never train a document's first token as the previous one's continuation.
    starts = (batch["position_ids"] == 0)
    assert (batch["labels"][starts] == IGNORE).all()
