"""Tiny random MoE models: a Qwen3-MoE (its experts are 3-D parameters, as in transformers' MoE layers)
and a gpt-oss stored with MXFP4 experts, as its hub checkpoints are."""

from __future__ import annotations

import shutil
from pathlib import Path

HIDDEN, INTER, EXPERTS, LAYERS, HEADS, HEAD_DIM = 32, 16, 4, 2, 4, 8
EXPERT_PARAMETERS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]


def make_tiny_moe(out: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """A 2-layer random Qwen3-MoE (4 experts) with the SmolLM2 tokenizer, saved as an HF folder."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen3MoeConfig

    config = Qwen3MoeConfig(
        vocab_size=49152, hidden_size=HIDDEN, intermediate_size=64, moe_intermediate_size=INTER,
        num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=2, head_dim=HEAD_DIM,
        num_experts=EXPERTS, num_experts_per_tok=2, decoder_sparse_step=1, max_position_embeddings=256,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(out)
    for f in Path(tokenizer_dir).iterdir():
        shutil.copy(f, out / f.name)
    return out


# OCP MXFP4: 4-bit E2M1 values (bit 3 the sign), two per byte (low nibble first), one E8M0 scale
# (2^(s - 127)) per 32 values along a row.
E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]


def mxfp4_decode(blocks, scales):
    """(experts, out, groups, 16) bytes + (experts, out, groups) scales -> the (experts, in, out) weight."""
    import torch

    experts, out, groups, _ = blocks.shape
    w = torch.zeros(experts, out, groups * 32)
    for e in range(experts):
        for r in range(out):
            for g in range(groups):
                for b in range(16):
                    byte = int(blocks[e, r, g, b])
                    for half, nibble in enumerate((byte & 0xF, byte >> 4)):
                        w[e, r, g * 32 + 2 * b + half] = E2M1[nibble] * 2.0 ** (int(scales[e, r, g]) - 127)
    return w.transpose(1, 2)


def make_tiny_mxfp4_gpt_oss(out: Path, tokenizer_dir: Path) -> Path:
    """A 1-layer random gpt-oss stored as its hub checkpoints are: experts as MXFP4 blocks and scales."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, GptOssConfig

    config = GptOssConfig(vocab_size=49152, hidden_size=64, intermediate_size=32, num_hidden_layers=1,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=4,
                          num_experts_per_tok=2, max_position_embeddings=128, layer_types=["full_attention"],
                          rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                          bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    for proj, rows, cols in (("gate_up_proj", 64, 64), ("down_proj", 64, 32)):
        name = f"model.layers.0.mlp.experts.{proj}"
        del state[name]
        state[name + "_blocks"] = torch.randint(0, 256, (4, rows, cols // 32, 16), dtype=torch.uint8, generator=g)
        state[name + "_scales"] = torch.randint(122, 130, (4, rows, cols // 32), dtype=torch.uint8, generator=g)
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "model.safetensors"))
    config.quantization_config = {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
    config.save_pretrained(out)
    for f in Path(tokenizer_dir).iterdir():
        shutil.copy(f, out / f.name)
    return out
