"""Selective recomputation (tuner.train.loss.selective_recompute) and the loss chunk size: the
same gradients as keeping every activation, what each layer keeps equal to the memory plan's
formula, and where it applies. Tiny models only."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from helpers import make_config, write_jsonl
from tuner.train.loss import CausalLMLoss, chunk_positions, keeps_output, selective_recompute, uses_selective_recompute

B, S = 2, 32


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, smol_tokenizer_dir) -> Path:
    """A 3-layer random Llama (GQA) with the SmolLM2 tokenizer."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    out = tmp_path_factory.mktemp("tiny-llama-recompute")
    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(out)
    for f in Path(smol_tokenizer_dir).iterdir():
        shutil.copy(f, out / f.name)
    return out


def tiny_cfg(tmp_path, base, **extra):
    data = write_jsonl(tmp_path / "data.jsonl", [{"input_ids": list(range(10, 42))} for _ in range(8)])
    values = dict(base_model=str(base), datasets=[{"path": str(data)}], dataset_prepared_path=str(tmp_path / "prepared"),
                  output_dir=str(tmp_path / "out"), sequence_len=S, micro_batch_size=B, max_steps=1,
                  learning_rate=1e-3, sample_packing=True)
    values.update(extra)
    return make_config(tmp_path, **values)


def build(cfg, selective: bool):
    """The model as the training loop builds it (tuner.train.setup.build_model), with or without
    selective recomputation."""
    from tuner.models.inputs import load_inputs
    from tuner.train.setup import build_model

    import os

    old = os.environ.get("TUNER_SELECTIVE_RECOMPUTE")
    os.environ["TUNER_SELECTIVE_RECOMPUTE"] = "1" if selective else "0"
    try:
        torch.manual_seed(0)  # the same LoRA initialisation both times
        return build_model(cfg, load_inputs(cfg), "bf16" if cfg.training.bf16 is True else "no")
    finally:
        if old is None:
            del os.environ["TUNER_SELECTIVE_RECOMPUTE"]
        else:
            os.environ["TUNER_SELECTIVE_RECOMPUTE"] = old


def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 40000, (B, S), generator=g)
    positions = torch.cat([torch.arange(S // 2), torch.arange(S - S // 2)]).repeat(B, 1)  # two documents per row
    labels = ids.clone()
    labels[positions == 0] = -100
    return {"input_ids": ids, "labels": labels, "position_ids": positions}


def loss_and_grads(model, bf16: bool):
    wrapped = CausalLMLoss(model).train()
    torch.manual_seed(2)  # the dropout masks
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        value = wrapped(**batch())
    value.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return value.detach(), grads


METHODS = {
    "lora-dropout-fp32": dict(adapter="lora", lora_target_linear=True, lora_dropout=0.1),
    "lora-bf16": dict(adapter="lora", lora_target_linear=True, bf16=True),
    "full-fp32": dict(),
    "full-bf16": dict(bf16=True),
}


@pytest.mark.parametrize("name", list(METHODS))
def test_same_loss_and_gradients_as_keeping_every_activation(tmp_path, tiny_dir, name):
    cfg = tiny_cfg(tmp_path, tiny_dir, **METHODS[name])
    assert uses_selective_recompute(cfg)
    kept = build(cfg, selective=False)
    recomputed = build(cfg, selective=True)
    base = recomputed.get_base_model() if hasattr(recomputed, "get_base_model") else recomputed
    assert base.is_activation_checkpointing and not getattr(base, "_require_grads_hooks", None)
    v1, g1 = loss_and_grads(kept, bool(cfg.training.bf16 is True))
    v2, g2 = loss_and_grads(recomputed, bool(cfg.training.bf16 is True))
    assert g1 and g1.keys() == g2.keys()
    assert torch.equal(v1, v2)
    worst = max((g1[k] - g2[k]).abs().max().item() for k in g1)
    assert worst == 0.0, worst  # the same operations on the same values: bit-identical


def test_where_it_applies(tmp_path, tiny_dir, monkeypatch):
    def on(**extra):
        return uses_selective_recompute(tiny_cfg(tmp_path, tiny_dir, **extra))

    assert on() and on(adapter="lora", lora_target_linear=True)
    assert not on(gradient_checkpointing=True)  # whole layers are recomputed instead
    assert not on(torch_compile=True)
    assert not on(adapter="qlora", load_in_4bit=True, lora_target_linear=True)
    assert not on(adapter="lora", lora_target_linear=True, peft_use_dora=True)
    monkeypatch.setenv("TUNER_SELECTIVE_RECOMPUTE", "0")
    assert not on()


@pytest.mark.parametrize("name", ["lora-bf16", "lora-dropout-fp32", "full-bf16"])
def test_kept_bytes_equal_the_memory_plan(tmp_path, tiny_dir, name):
    """Per decoder layer: its input plus the outputs of the operations the policy keeps, counted
    in a real forward, equal the plan's `layer_kept` to the byte."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from tuner.models.load import decoder_layers
    from tuner.plan import count_parameters, describe_model, plan_memory, resolve_precision

    cfg = tiny_cfg(tmp_path, tiny_dir, **METHODS[name])
    facts = describe_model(cfg)
    plan = plan_memory(cfg, count_parameters(cfg, facts), resolve_precision(cfg)[0])
    assert plan.selective and len(plan.layer_kept) == 3
    model = build(cfg, selective=False)
    hidden = model.config.hidden_size
    layers = decoder_layers(model)
    current: list[int | None] = [None]
    kept = [0] * len(layers)
    for i, layer in enumerate(layers):
        def enter(module, args, kwargs, i=i):
            current[0] = i
            kept[i] += args[0].numel() * args[0].element_size() if args else kwargs["hidden_states"].nbytes
        layer.register_forward_pre_hook(enter, with_kwargs=True)
        layer.register_forward_hook(lambda m, a, o: current.__setitem__(0, None))

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if current[0] is not None and keeps_output(func, args, hidden):
                outs = out if isinstance(out, (tuple, list)) else [out]
                kept[current[0]] += sum(t.nbytes for t in outs if isinstance(t, torch.Tensor))
            return out

    with Count(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.training.bf16 is True):
        CausalLMLoss(model).train()(**batch())
    assert kept == plan.layer_kept, (kept, plan.layer_kept)


def test_loss_chunk_size_from_vocabulary():
    assert chunk_positions(49152) == 455  # SmolLM2: 455 x 49,152 logits x 12 B <= 256 MiB
    assert chunk_positions(256_000, softcap=True) == 128  # at least MIN_CHUNK
    assert chunk_positions(32_000) * 12 * 32_000 <= 256 << 20 < (chunk_positions(32_000) + 1) * 12 * 32_000


def test_selective_recompute_is_idempotent_on_plain_models(tiny_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    selective_recompute(model)
    selective_recompute(model)
    assert model.is_activation_checkpointing and not getattr(model, "_require_grads_hooks", None)


@pytest.mark.parametrize("cache_enabled", [True, False])
def test_a_second_forward_in_one_autocast_region_recomputes(cache_enabled):
    """KTO's KL batch runs under no_grad before the policy's forward, in the same autocast region.
    With autocast's weight-cast cache on, the second forward finds its casts cached, so it runs
    fewer cast ops than its recomputation in backward, and selective recomputation fails (the
    control); tuner's Accelerator turns the cache off (accelerator_kwargs), and backward runs."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    from tuner.config.schema import TrainingBlock
    from tuner.train.distributed import accelerator_kwargs

    handlers = accelerator_kwargs(TrainingBlock(learning_rate=1e-4), "bf16")["kwargs_handlers"]
    assert [h.cache_enabled for h in handlers] == [False]
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    model = get_peft_model(AutoModelForCausalLM.from_config(config), LoraConfig(r=4, target_modules="all-linear"))
    model.train()
    assert selective_recompute(model)
    ids = torch.randint(0, 100, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=cache_enabled):
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
        loss = model(input_ids=ids, use_cache=False).logits.float().mean()
    if cache_enabled:
        with pytest.raises(RuntimeError, match="not found in storage"):
            loss.backward()
    else:
        loss.backward()
        assert all(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)
