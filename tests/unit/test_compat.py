"""Axolotl keys without a tuner field: read as tuner's key with a notice, reported as not
applied, or refused as "not supported yet" naming the capability (tuner.config.compat)."""

from __future__ import annotations

import importlib.util

import pytest

from tuner.config import ConfigError
from tuner.config.load import parse_yaml, validate_raw

BASE = """\
base_model: ./no-such-model
datasets:
  - path: data.jsonl
    type: alpaca
learning_rate: 2.0e-4
num_epochs: 1
"""
LORA = "adapter: lora\nlora_target_linear: true\n"


def ok(extra: str):
    return validate_raw(parse_yaml(BASE + extra, "c.yml"))


def refused(extra: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        ok(extra)
    return info.value.lines


def notices(cfg, kind: str | None = None) -> list[str]:
    return [str(n) for n in cfg.notices if kind is None or n.kind == kind]


def test_legacy_flash_attention_flag_is_read_as_attn_implementation():
    cfg = ok("flash_attention: true\n")
    [renamed] = notices(cfg, "renamed")
    assert renamed.startswith("flash_attention (line 7): ") and "attn_implementation: flash_attention_2" in renamed
    if importlib.util.find_spec("flash_attn") is None:  # this machine: runs as sdpa, and says what to install
        assert cfg.model.attn_implementation == "sdpa"
        assert any("pip install flash-attn" in n for n in notices(cfg, "not applied"))


@pytest.mark.parametrize("value", ["xformers", "sage", "fp8", "kernels-community/flash-attn3"])
def test_axolotl_attention_backends_run_as_sdpa_with_a_notice(value):
    cfg = ok(f"attn_implementation: {value}\n")
    assert cfg.model.attn_implementation == "sdpa"
    assert any(n.startswith("attn_implementation (line 7)") for n in notices(cfg, "not applied"))


def test_attention_alias_and_unknown_value_are_refused_up_front():
    assert "write the full name 'flash_attention_2'" in refused("attn_implementation: flash\n")[0]
    assert "expected one of" in refused("attn_implementation: quantum\n")[0]


def test_torch_dtype_and_top_level_fsdp_version():
    cfg = ok("torch_dtype: bfloat16\n")
    assert cfg.training.bf16 is True and "`bf16: true`" in notices(cfg, "renamed")[0]
    cfg = ok("fsdp_version: 2\nfsdp_config:\n  fsdp_offload_params: true\n  fsdp_state_dict_type: SHARDED_STATE_DICT\n")
    t = cfg.training
    assert t.fsdp_config.fsdp_version == 2 and t.fsdp_config.offload_params is True
    assert t.fsdp_config.state_dict_type == "SHARDED_STATE_DICT" and t.fsdp == ["full_shard", "auto_wrap"]
    said = " ".join(notices(cfg, "renamed"))
    assert "fsdp_config.offload_params" in said and "fsdp_config.fsdp_version: 2" in said


def test_speed_only_keys_are_reported_not_applied():
    cfg = ok("plugins:\n  - axolotl.integrations.liger.LigerPlugin\nliger_rms_norm: true\nlora_mlp_kernel: true\n"
             "cut_cross_entropy: true\nremove_unused_columns: false\nhub_model_id: me/model\n")
    said = notices(cfg, "not applied")
    for key in ("plugins[0]", "liger_rms_norm", "lora_mlp_kernel", "cut_cross_entropy", "hub_model_id"):
        assert any(n.startswith(key + " (line") for n in said), (key, said)
    assert not any(n.startswith("remove_unused_columns") for n in said)  # false is what tuner does


def test_capabilities_tuner_lacks_are_not_supported_yet_with_the_capability():
    lines = refused("processor_type: AutoProcessor\ncontext_parallel_size: 2\nqat:\n  weight_dtype: int4\n")
    joined = "\n".join(lines)
    assert "processor_type (line 7): 'AutoProcessor': not supported yet: multimodal training" in joined
    assert "context parallelism" in joined and "quantization-aware training" in joined
    ok("context_parallel_size: 1\nprocessor_type:\n")  # asks for nothing


def test_a_key_the_schema_has_is_the_schemas(monkeypatch):
    """A capability that lands as a schema field (rl: preference training) is no longer refused here,
    and the tables hold no such dead entries."""
    from tuner.config import compat
    from tuner.config.schema import BLOCKS

    fields = {k for b in BLOCKS.values() for k in b.model_fields}
    assert not (set(compat.UNSUPPORTED) | set(compat.NOT_APPLIED)) & fields
    monkeypatch.setitem(compat.UNSUPPORTED, "rl_beta", "preference training")
    monkeypatch.setitem(compat.NOT_APPLIED, "shuffle_merged_datasets", "not applied")
    data = {"rl_beta": 0.2, "shuffle_merged_datasets": False, "process_reward_model": True}
    remarks = compat._tables(data, {})
    assert data == {"rl_beta": 0.2, "shuffle_merged_datasets": False}
    assert [r.path for r in remarks] == [("process_reward_model",)]


def test_cadences_tf32_and_checkpointing_kwargs_are_typed():
    cfg = ok("tf32: false\nsaves_per_epoch: 4\nval_set_size: 0.1\nevals_per_epoch: 2\ngradient_checkpointing: true\n"
             "gradient_checkpointing_kwargs:\n  use_reentrant: false\n")
    t = cfg.training
    assert t.tf32 is False and t.save_interval(10, 10) == 3 and t.eval_interval(10, 10) == 5
    assert t.gradient_checkpointing_kwargs.use_reentrant is False
    assert t.save_interval(10, 10) is not None and ok("").training.save_interval(10, 10) is None
    assert any("saves_per_epoch" in line for line in refused("saves_per_epoch: 2\nsave_steps: 5\n"))
    assert any("evals_per_epoch" in line for line in refused("val_set_size: 0.1\nevals_per_epoch: 2\neval_steps: 5\n"))
    cfg = ok("evals_per_epoch: 4\n")  # nothing to evaluate: Axolotl ignores it, tuner says so
    assert any(n.startswith("evals_per_epoch") for n in notices(cfg, "not applied"))


def test_lora_keys_without_adapter_are_refused_even_at_their_defaults():
    lines = refused("lora_r: 8\n")
    assert lines[0].startswith("lora_r (line 7): ") and "no adapter" in lines[0] and "adapter: lora" in lines[0]
    ok("lora_r:\nlora_alpha:\nload_in_8bit: false\n")  # empty, as Axolotl writes them: accepted


def test_unfrozen_parameters_with_an_adapter_is_accepted_as_in_axolotl():
    cfg = ok(LORA + "unfrozen_parameters:\n  - ^lm_head.*\n")
    assert cfg.adapter.unfrozen_parameters == ["^lm_head.*"]
    assert any("use_reentrant must be false" in line for line in refused(
        LORA + "unfrozen_parameters: [x]\ngradient_checkpointing: true\ngradient_checkpointing_kwargs: {use_reentrant: true}\n"))


def test_missing_local_files_are_warnings_not_errors(tmp_path):
    cfg = ok("")
    warned = notices(cfg, "warning")
    assert any(n.startswith("base_model (line 1)") and "does not exist here" in n for n in warned)
    assert any(n.startswith("datasets[0].path (line 3)") for n in warned)
    hub = validate_raw(parse_yaml(BASE.replace("./no-such-model", "meta-llama/Llama-3.2-1B")
                                  .replace("data.jsonl", "tatsu-lab/alpaca"), "c.yml"))
    assert notices(hub, "warning") == []  # hub ids are not looked up (validate never touches the network)


def test_optimizer_names_axolotl_uses():
    for name in ("adamw_bnb_8bit", "paged_adamw_8bit", "adamw_8bit", "paged_adamw_32bit", "lion_8bit", "adafactor"):
        assert ok(f"optimizer: {name}\n").training.optimizer == name
    cfg = ok("optimizer: adamw_torch_4bit\n")
    assert any("bitsandbytes' 8-bit AdamW" in n for n in notices(cfg, "not applied"))
    assert "not supported yet: schedule-free" in refused("optimizer: schedule_free_adamw\n")[0]
    assert "not supported yet: the muon optimizer" in refused("optimizer: muon\n")[0]
