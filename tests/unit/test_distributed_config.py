"""FSDP and DeepSpeed: the shipped configs turn into the accelerate plugins they describe,
without a GPU; on this CPU machine they are refused, never silently dropped."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuner.config import load_config
from tuner.errors import UserError
from tuner.train.distributed import accelerator_kwargs, deepspeed_plugin, fsdp_plugin

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _repo(monkeypatch):
    monkeypatch.chdir(REPO)


def test_fsdp2_plugin_from_the_shipped_config():
    from torch.distributed.fsdp import StateDictType

    t = load_config(REPO / "configs" / "llama-3.2-1b-fsdp2.yml").training
    plugin = fsdp_plugin(t, mixed_precision="bf16")
    assert plugin.fsdp_version == 2
    assert plugin.reshard_after_forward is True  # FULL_SHARD
    assert plugin.state_dict_type == StateDictType.FULL_STATE_DICT
    assert plugin.transformer_cls_names_to_wrap == ["LlamaDecoderLayer"]
    assert plugin.auto_wrap_policy.__name__ == "transformer_auto_wrap_policy"
    assert plugin.cpu_ram_efficient_loading is True
    assert plugin.mixed_precision_policy is not None and "bfloat16" in str(plugin.mixed_precision_policy)
    assert type(plugin.cpu_offload).__name__ == "OffloadPolicy"  # no CPU offload


def test_fsdp_offload_and_shard_grad_op():
    t = load_config(REPO / "configs" / "llama-3.2-1b-fsdp2.yml",
                    ["--fsdp", "[shard_grad_op, auto_wrap, offload]"]).training
    plugin = fsdp_plugin(t)
    assert plugin.reshard_after_forward is False  # SHARD_GRAD_OP
    assert type(plugin.cpu_offload).__name__ == "CPUOffloadPolicy"


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_plugins_from_the_shipped_configs(stage):
    t = load_config(REPO / "configs" / f"llama-3.2-1b-zero{stage}.yml").training
    plugin = deepspeed_plugin(t)
    assert plugin.zero_stage == stage
    assert plugin.hf_ds_config.config["train_micro_batch_size_per_gpu"] in ("auto", 2)
    if stage == 3:
        assert plugin.offload_param_device == "none" and plugin.offload_optimizer_device == "none"


def test_inline_deepspeed_mapping_validates():
    cfg = load_config(REPO / "configs" / "llama-3.2-1b-zero2.yml",
                      ["--deepspeed", "{zero_optimization: {stage: 3, offload_param: {device: cpu}}}"])
    assert deepspeed_plugin(cfg.training).offload_param_device == "cpu"


@pytest.mark.parametrize("name", ["llama-3.2-1b-fsdp2.yml", "llama-3.2-1b-zero3.yml"])
def test_refused_on_cpu_instead_of_dropped(name):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    t = load_config(REPO / "configs" / name).training
    with pytest.raises(UserError, match="needs CUDA GPUs and this machine has none"):
        accelerator_kwargs(t, "no")


def test_fsdp_and_deepspeed_conflict_and_missing_file(tmp_path):
    from tuner.config import ConfigError

    with pytest.raises(ConfigError, match="fsdp and deepspeed are both set"):
        load_config(REPO / "configs" / "llama-3.2-1b-fsdp2.yml", ["--deepspeed", "configs/deepspeed/zero2.json"])
    with pytest.raises(ConfigError, match="no such DeepSpeed JSON file"):
        load_config(REPO / "configs" / "llama-3.2-1b-zero2.yml", ["--deepspeed", "nope.json"])
