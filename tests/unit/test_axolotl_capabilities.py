"""Axolotl keys its example configs use, honoured: Axolotl's repo-relative DeepSpeed files, its cosine
schedule variants, min_sample_len, tokenizer_legacy, revision_of_model / model_revision, and
base_model_ignore_patterns (early stopping and lora_target_parameters: tests/e2e/test_axolotl_capabilities.py,
tests/unit/test_lora_target_parameters.py)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest

from helpers import make_config, write_jsonl
from tiny_moe import make_tiny_mxfp4_gpt_oss, mxfp4_decode
from tuner.config import ConfigError
from tuner.errors import UserError


def cfg_of(tmp_path, **extra):
    data = write_jsonl(tmp_path / "data.jsonl", [{"text": "hello"}])
    values = dict(base_model=str(tmp_path), datasets=[{"path": str(data), "type": "completion"}],
                  dataset_prepared_path=str(tmp_path / "prepared"), max_steps=10, learning_rate=1e-3)
    values.update(extra)
    return make_config(tmp_path, **values)


def notices(cfg, key):
    return [n for n in cfg.notices if n.key.split(" ")[0] == key]


# --------------------------------------------------------------------------- DeepSpeed files


# Each of Axolotl's deepspeed_configs/ names, and the settings its file there has.
AXOLOTL_DEEPSPEED = {
    "zero1": (1, None, None, "auto"),
    "zero2": (2, "cpu", None, "auto"),
    "zero3": (3, None, None, "auto"),
    "zero3_bf16": (3, None, None, True),
    "zero3_bf16_cpuoffload_params": (3, None, "cpu", True),
    "zero3_bf16_cpuoffload_all": (3, "cpu", "cpu", True),
}


@pytest.mark.parametrize("name", sorted(AXOLOTL_DEEPSPEED))
def test_axolotls_repo_relative_deepspeed_files_read_as_tuners_copies(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)  # no deepspeed_configs/ folder here
    cfg = cfg_of(tmp_path, deepspeed=f"deepspeed_configs/{name}.json")
    path = Path(cfg.training.deepspeed)
    assert path.is_file() and path.name == f"{name}.json"
    [notice] = notices(cfg, "deepspeed")
    assert notice.kind == "renamed" and "a file of Axolotl's repository" in notice.message and str(path) in notice.message
    settings = json.loads(path.read_text())
    zero = settings["zero_optimization"]
    stage, optimizer, params, bf16 = AXOLOTL_DEEPSPEED[name]
    assert zero["stage"] == stage
    assert zero.get("offload_optimizer", {}).get("device") == optimizer
    assert zero.get("offload_param", {}).get("device") == params
    assert settings["bf16"]["enabled"] == bf16
    if stage == 3:
        assert zero["gather_16bit_weights_on_model_save"] is True


def test_a_deepspeed_file_that_exists_here_is_used_as_it_is(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "deepspeed_configs").mkdir()
    (tmp_path / "deepspeed_configs" / "zero2.json").write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    cfg = cfg_of(tmp_path, deepspeed="deepspeed_configs/zero2.json")
    assert cfg.training.deepspeed == "deepspeed_configs/zero2.json" and not notices(cfg, "deepspeed")


def test_a_deepspeed_file_tuner_does_not_ship_is_still_missing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="no such DeepSpeed JSON file"):
        cfg_of(tmp_path, deepspeed="deepspeed_configs/zero1_torch_compile.json")


def test_deepspeed_auto_batch_values_are_tuners(tmp_path, monkeypatch):
    """accelerate cannot fill an "auto" micro-batch size without a DataLoader: tuner fills it, the
    accumulation and the clipping norm from the config."""
    from tuner.train.distributed import deepspeed_plugin

    monkeypatch.chdir(tmp_path)
    cfg = cfg_of(tmp_path, deepspeed="deepspeed_configs/zero3_bf16.json", micro_batch_size=3,
                 gradient_accumulation_steps=2, max_grad_norm=0.5)
    plugin = deepspeed_plugin(cfg.training)
    ds = plugin.deepspeed_config
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["gradient_clipping"]) == (3, 2, 0.5)
    assert plugin.zero_stage == 3


# --------------------------------------------------------------------------- cosine variants

# (extra keys, learning-rate factor at steps 0..10) for 10 steps with 2 of warmup, by hand from
# Axolotl's formulas (axolotl/utils/schedulers.py).
C = math.cos
CURVES = {
    "quadratic warmup": (dict(lr_quadratic_warmup=True), [0, 0.25, 1] + [0.5 * (1 + C(math.pi * (s - 2) / 8)) for s in range(3, 11)]),
    "min lr": (dict(cosine_min_lr_ratio=0.1), [0, 0.5, 1] + [0.1 + 0.9 * 0.5 * (1 + C(math.pi * (s - 2) / 8)) for s in range(3, 11)]),
    "constant tail": (dict(cosine_min_lr_ratio=0.1, cosine_constant_lr_ratio=0.5),
                      [0, 0.5, 1, 0.1 + 0.9 * 0.75, 0.1 + 0.9 * 0.25] + [0.1] * 6),
}


@pytest.mark.parametrize("name", sorted(CURVES))
def test_axolotls_cosine_variants_follow_its_formulas(tmp_path, name):
    import torch

    from tuner.train.optim import build_scheduler

    extra, factors = CURVES[name]
    cfg = cfg_of(tmp_path, lr_scheduler="cosine", warmup_steps=2, learning_rate=0.01, **extra)
    assert not cfg.notices or all(n.kind == "warning" for n in cfg.notices)  # nothing reported as not applied
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    scheduler = build_scheduler(optimizer, cfg.training, total_steps=10)
    seen = []
    for _ in range(11):
        seen.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0.01 * f for f in factors], abs=1e-12)
    plain = [0, 0.5, 1] + [0.5 * (1 + C(math.pi * (s - 2) / 8)) for s in range(3, 11)]  # transformers' cosine
    assert seen != pytest.approx([0.01 * f for f in plain], abs=1e-12)


def test_the_plain_cosine_is_transformers_when_no_variant_is_asked(tmp_path):
    import torch

    from tuner.train.optim import build_scheduler

    cfg = cfg_of(tmp_path, lr_scheduler="cosine", warmup_steps=2, cosine_min_lr_ratio=0.0)
    scheduler = build_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), cfg.training, 10)
    assert type(scheduler).__name__ == "LambdaLR" and "get_cosine_schedule_with_warmup" in repr(scheduler.lr_lambdas[0])


@pytest.mark.parametrize("extra, key, words", [
    (dict(lr_scheduler="linear", cosine_min_lr_ratio=0.1), "cosine_min_lr_ratio", "lr_scheduler is linear"),
    (dict(lr_quadratic_warmup=True, cosine_min_lr_ratio=0.1), "cosine_min_lr_ratio", "quadratic warmup"),
    (dict(cosine_constant_lr_ratio=0.8), "cosine_constant_lr_ratio", "cosine_min_lr_ratio, which is not set"),
])
def test_what_axolotl_leaves_unused_is_reported_as_not_applied(tmp_path, extra, key, words):
    cfg = cfg_of(tmp_path, **extra)
    [notice] = notices(cfg, key)
    assert notice.kind == "not applied" and words in notice.message


def test_ratios_outside_0_1_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="cosine_min_lr_ratio.*must be <= 1"):
        cfg_of(tmp_path, cosine_min_lr_ratio=1.5)


# --------------------------------------------------------------------------- min_sample_len


def test_rows_shorter_than_min_sample_len_are_dropped_before_truncation():
    from tuner.data.tokenize import KEPT, TOO_LONG, TOO_SHORT, TokenizeSettings, finish_row

    settings = TokenizeSettings(sequence_len=6, excess_length_strategy="truncate", train_on_inputs=False, min_sample_len=4)
    assert finish_row([1, 2, 3], [-100, 2, 3], settings)["status"] == TOO_SHORT
    assert finish_row([1, 2, 3, 4], [-100, 2, 3, 4], settings)["status"] == KEPT
    long = finish_row(list(range(9)), list(range(9)), settings)
    assert long["status"] == KEPT and long["truncated"] and len(long["input_ids"]) == 6
    drop = TokenizeSettings(sequence_len=6, excess_length_strategy="drop", train_on_inputs=False, min_sample_len=4)
    assert finish_row(list(range(9)), list(range(9)), drop)["status"] == TOO_LONG


def test_prepare_counts_the_rows_min_sample_len_drops(tmp_path, smol_tokenizer):
    from tuner.data.pipeline import prepare

    rows = [{"text": "hi"}, {"text": "a somewhat longer line of text that has many more tokens in it"}, {"text": "ok"}]
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    cfg = cfg_of(tmp_path, datasets=[{"path": str(data), "type": "completion"}], min_sample_len=5)
    prepared = prepare(cfg, smol_tokenizer, [])
    [source] = prepared.stats["sources"]
    assert (source["read"], source["kept"], source["too_short"]) == (3, 1, 2)
    assert source["dropped_examples"]["too_short"] == [1, 3]
    assert "dropped 2 shorter than min_sample_len (rows 1, 3)" in prepared.summary()
    other = prepare(cfg_of(tmp_path, datasets=[{"path": str(data), "type": "completion"}], min_sample_len=2),
                    smol_tokenizer, [])
    assert other.fingerprint != prepared.fingerprint and other.stats["sources"][0]["kept"] == 3


def test_fingerprint_of_data_prepared_without_the_new_keys_is_unchanged(tmp_path):
    from tuner.data.cache import token_keys

    keys = token_keys(cfg_of(tmp_path))
    assert "min_sample_len" not in keys and "tokenizer_legacy" not in keys
    assert token_keys(cfg_of(tmp_path, min_sample_len=3, tokenizer_legacy=False))["tokenizer_legacy"] is False


# --------------------------------------------------------------------------- tokenizer_legacy


@pytest.fixture(scope="module")
def llama_tokenizer_dir(tmp_path_factory) -> Path:
    """A tiny sentencepiece-style LlamaTokenizer (Metaspace) with one added special token."""
    from transformers import LlamaTokenizer

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "▁": 3, "H": 4, "i": 5, "Hi": 6, "<x>": 7}
    tok = LlamaTokenizer(vocab=vocab, merges=[("H", "i")], legacy=False)
    tok.add_special_tokens({"additional_special_tokens": ["<x>"]})
    out = tmp_path_factory.mktemp("llama-tok")
    tok.save_pretrained(out)
    return out


@pytest.mark.parametrize("legacy, after_special", [(True, ["▁", "Hi"]), (False, ["Hi"]), (None, ["Hi"])])
def test_tokenizer_legacy_is_passed_to_tokenizers_that_take_it(llama_tokenizer_dir, legacy, after_special):
    from tuner.config.schema import ModelBlock
    from tuner.models.load import BaseModelSource, load_tokenizer

    model = ModelBlock(base_model=str(llama_tokenizer_dir), tokenizer_legacy=legacy)
    tok = load_tokenizer(model, BaseModelSource(llama_tokenizer_dir, str(llama_tokenizer_dir), "folder"))
    pieces = tok.convert_ids_to_tokens(tok("Hi<x>Hi", add_special_tokens=False)["input_ids"])
    assert pieces == ["▁", "Hi", "<x>", *after_special]  # legacy: a word start again after a special token


def test_tokenizer_legacy_on_a_tokenizer_without_it_is_reported(smol_tokenizer_dir, caplog):
    from tuner.config.schema import ModelBlock
    from tuner.models.load import BaseModelSource, load_tokenizer

    model = ModelBlock(base_model=str(smol_tokenizer_dir), tokenizer_legacy=True)
    with caplog.at_level(logging.WARNING, logger="tuner"):
        load_tokenizer(model, BaseModelSource(smol_tokenizer_dir, str(smol_tokenizer_dir), "folder"))
    assert "tokenizer_legacy: not applied" in caplog.text


# --------------------------------------------------------------------------- hub revisions


def fake_hub_cache(root: Path, repo: str, commits: list[str], main: str) -> Path:
    """A hub cache as huggingface_hub lays it out: snapshots per commit, refs/main."""
    folder = root / f"models--{repo.replace('/', '--')}"
    for commit in commits:
        snap = folder / "snapshots" / commit
        snap.mkdir(parents=True)
        (snap / "config.json").write_text(json.dumps({"commit": commit}))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(main)
    return folder


def test_revision_of_model_picks_that_snapshot_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from tuner.config.schema import ModelBlock
    from tuner.models.load import hub_snapshot

    old, new = "6299b5a" + "0" * 33, "2ee94b0" + "1" * 33
    fake_hub_cache(tmp_path, "org/model", [old, new], main=new)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for revision, expected in ((None, new), ("main", new), ("6299b5a", old), (old, old)):
        model = ModelBlock(base_model="org/model", revision_of_model=revision)
        assert hub_snapshot("org/model", model, weights=False).name == expected, revision
    with pytest.raises(UserError, match="at revision_of_model 'abc1234' is not in the local hub cache"):
        hub_snapshot("org/model", ModelBlock(base_model="org/model", revision_of_model="abc1234"), weights=False)


def test_a_short_commit_that_starts_two_cached_commits_is_refused(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from tuner.config.schema import ModelBlock
    from tuner.models.load import hub_snapshot

    fake_hub_cache(tmp_path, "org/model", ["6299b5a" + "0" * 33, "6299b5a" + "1" * 33], main="6299b5a" + "1" * 33)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="starts 2 cached commits"):
        hub_snapshot("org/model", ModelBlock(base_model="org/model", revision_of_model="6299b5a"), weights=False)


def test_model_revision_is_read_as_revision_of_model(tmp_path):
    cfg = cfg_of(tmp_path, base_model="org/model", model_revision="6299b5a")
    assert cfg.model.revision_of_model == "6299b5a"
    [notice] = notices(cfg, "model_revision")
    assert notice.kind == "renamed" and "revision_of_model: 6299b5a" in notice.message
    with pytest.raises(ConfigError, match="model_revision 'a1' and revision_of_model 'b2' differ"):
        cfg_of(tmp_path, base_model="org/model", model_revision="a1", revision_of_model="b2")


def test_revisions_of_local_paths_are_reported_as_not_applied(tmp_path):
    cfg = cfg_of(tmp_path, revision_of_model="main")
    assert [n.kind for n in notices(cfg, "revision_of_model")] == ["not applied"]
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "x"}])
    cfg = cfg_of(tmp_path, datasets=[{"path": str(data), "type": "completion", "revision": "v1"}])
    assert [n.kind for n in notices(cfg, "datasets[0].revision")] == ["not applied"]


def test_hub_datasets_load_at_their_revision(tmp_path, monkeypatch):
    import datasets

    from tuner.data.load import load_hub

    seen = {}

    def fake_load_dataset(path, **kwargs):
        seen.update(kwargs)
        return datasets.Dataset.from_list([{"text": "x"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cfg = cfg_of(tmp_path, datasets=[{"path": "org/data", "type": "completion", "revision": "v1.0"}])
    load_hub(cfg.data.datasets[0], 0)
    assert seen["revision"] == "v1.0"


def test_base_model_ignore_patterns_reach_the_hub_download(tmp_path, monkeypatch):
    import huggingface_hub

    from tuner.config.schema import ModelBlock
    from tuner.models.load import hub_snapshot

    seen = {}

    def fake_snapshot_download(repo_id, **kwargs):
        seen.update(kwargs)
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    hub_snapshot("org/model", ModelBlock(base_model="org/model", base_model_ignore_patterns="pytorch*"))
    assert seen["ignore_patterns"] == "pytorch*" and "*.safetensors" in seen["allow_patterns"]


# --------------------------------------------------------------------------- MXFP4 base models (gpt-oss)

@pytest.fixture(scope="module")
def mxfp4_dir(tmp_path_factory, smol_tokenizer_dir) -> Path:
    return make_tiny_mxfp4_gpt_oss(tmp_path_factory.mktemp("gpt-oss-mxfp4"), smol_tokenizer_dir)


def test_mxfp4_experts_load_dequantized_and_trainable(tmp_path, mxfp4_dir):
    import torch
    from safetensors.torch import load_file

    from tuner.models.load import BaseModelSource, load_model, load_tokenizer

    cfg = cfg_of(tmp_path, base_model=str(mxfp4_dir), model_quantization_config="Mxfp4Config",
                 model_quantization_config_kwargs={"dequantize": True})
    base = BaseModelSource(mxfp4_dir, str(mxfp4_dir), "folder")
    model = load_model(cfg.model, base, load_tokenizer(cfg.model, base), dtype=torch.float32)
    stored = load_file(str(mxfp4_dir / "model.safetensors"))
    experts = model.model.layers[0].mlp.experts
    for proj in ("gate_up_proj", "down_proj"):
        key = f"model.layers.0.mlp.experts.{proj}"
        weight = getattr(experts, proj)
        assert isinstance(weight, torch.nn.Parameter) and weight.dtype == torch.float32
        assert torch.equal(weight.detach(), mxfp4_decode(stored[key + "_blocks"], stored[key + "_scales"]))
    assert not hasattr(model.config, "quantization_config") and not getattr(model, "is_quantized", False)


def test_mxfp4_without_dequantize_or_with_bitsandbytes_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="not supported yet: training MXFP4 weights as stored"):
        cfg_of(tmp_path, model_quantization_config="Mxfp4Config")
    with pytest.raises(ConfigError, match="model_quantization_config and load_in_4bit"):
        cfg_of(tmp_path, model_quantization_config="Mxfp4Config", model_quantization_config_kwargs={"dequantize": True},
               adapter="qlora", load_in_4bit=True, lora_target_linear=True)
    with pytest.raises(ConfigError, match="not supported yet: FP8 base models"):
        cfg_of(tmp_path, model_quantization_config="FineGrainedFP8Config")


# --------------------------------------------------------------------------- deduplication, dp_shard_size, empty adapter


def test_exact_duplicate_rows_are_dropped_before_the_split_and_counted(tmp_path, smol_tokenizer):
    from tuner.data.pipeline import prepare

    rows = [{"text": "one row"}, {"text": "another row"}, {"text": "one row"}, {"text": "a third row"}]
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    cfg = cfg_of(tmp_path, datasets=[{"path": str(data), "type": "completion"}], dataset_exact_deduplication=True,
                 val_set_size=1)
    prepared = prepare(cfg, smol_tokenizer, [])
    assert prepared.stats["rows"] == 3 and prepared.stats["duplicates"] == 1
    assert prepared.train.num_rows + prepared.eval.num_rows == 3
    texts = {smol_tokenizer.decode(r["input_ids"]) for r in [*prepared.train, *prepared.eval]}
    assert len(texts) == 3
    assert "total: 3 rows (1 exact duplicates dropped)" in prepared.summary()
    plain = prepare(cfg_of(tmp_path, datasets=[{"path": str(data), "type": "completion"}], val_set_size=1),
                    smol_tokenizer, [])
    assert plain.fingerprint != prepared.fingerprint and plain.stats["rows"] == 4 and "duplicates" not in plain.stats


def test_dp_shard_size_is_fsdp_across_every_process(tmp_path, monkeypatch):
    from tuner.train.distributed import accelerator_kwargs

    with pytest.raises(ConfigError, match="dp_shard_size: 4 shards the model with FSDP; set fsdp"):
        cfg_of(tmp_path, dp_shard_size=4)
    cfg = cfg_of(tmp_path, dp_shard_size=4, fsdp_config={"fsdp_version": 2})
    monkeypatch.setenv("WORLD_SIZE", "8")
    with pytest.raises(UserError, match="dp_shard_size: 4 with 8 training processes: not supported yet"):
        accelerator_kwargs(cfg.training, "no")
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(UserError, match="fsdp: needs CUDA GPUs"):  # the size is right; this machine has no GPU
        accelerator_kwargs(cfg.training, "no")


def test_lora_keys_beside_an_empty_adapter_line_are_a_full_fine_tune_as_in_axolotl(tmp_path):
    cfg = cfg_of(tmp_path, adapter=None, lora_r=64, lora_alpha=32, lora_target_linear=True)
    assert cfg.adapter.adapter is None and cfg.adapter.lora_r == 8  # untouched defaults: nothing LoRA applies
    [notice] = notices(cfg, "adapter")
    assert notice.kind == "not applied" and "full fine-tuning" in notice.message
    assert "lora_r, lora_alpha, lora_target_linear" in notice.message
    with pytest.raises(ConfigError, match="lora_r .*is set but there is no adapter"):  # no adapter line: refused
        make_config(tmp_path, base_model=str(tmp_path), datasets=[{"path": "x.jsonl", "type": "alpaca"}],
                    max_steps=1, learning_rate=1e-3, lora_r=64)
