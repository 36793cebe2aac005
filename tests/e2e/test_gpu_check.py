"""bench/gpu_check.py --dry-run: the GPU check's code on CPU (tiny models, 2 steps a case).

The GPU numbers come from running the check on a GPU (bench/README.md); this test keeps the
prepared command from failing there for a reason a CPU can show: every runner, the report
writers, `tuner info` parsing, and the configs of the CUDA-only cases (written, then skipped
at the device check), which must validate.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import gpu_check

CUDA_ONLY = ("llama1b-lora-2048-flex", "fp16-grad-scaler", "resume-after-sigkill", "llama1b-qlora-2048")
TRAINED = ("llama1b-lora-2048", "smollm2-full-2048-gc")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu-check")
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--dry-run", "--out", str(root / "out"),
         "--work", str(root / "work")],
        capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    report = json.loads((root / "out" / "gpu_check.json").read_text())
    return report, (root / "out" / "gpu_check.md").read_text(), root / "work"


def test_dry_run_trains_each_case_and_sets_the_plan_beside_it(dry_run):
    report, table, _ = dry_run
    results = report["results"]
    assert set(results) == {case.name for case in gpu_check.CASES}
    assert not [name for name, r in results.items() if r["status"].startswith("failed")]
    for name in TRAINED:
        r = results[name]
        assert r["status"] == "ok", r
        assert r["steps_logged"] == 2 and r["measured_steps"] == 2
        assert all(math.isfinite(x) for x in r["losses"])
        assert r["tokens_per_s"] > 0 and 0 < r["mfu"] and 0 < r["trained_fraction"] <= 1
        assert r["plan_bytes"] > 0 and r["measured_bytes"] > 0 and r["plan_over_measured"] > 0
        assert f"| {name} | {r['tokens_per_s']:,.0f} |" in table
    assert report["plans"]["llama1b-lora-2048"]["trainable"] > 0
    assert report["meta"]["peak_flops"] > 0


def test_dry_run_takes_cuda_only_cases_to_their_device_check(dry_run):
    report, _, work = dry_run
    results = report["results"]
    for name in CUDA_ONLY:
        assert results[name]["status"] == "skipped: no CUDA", (name, results[name])
    configs = [work / "configs" / f"{name}.yml" for name in
               ("llama1b-lora-2048-flex", "fp16-grad-scaler", "resume-reference", "resume-killed", "llama1b-qlora-2048")]
    for config in configs:  # what the GPU would train is a valid tuner config
        done = subprocess.run([sys.executable, "-m", "tuner", "validate", str(config)], capture_output=True, text=True)
        assert done.returncode == 0, (config.name, done.stderr[-2000:])
    assert report["attention_choice"]["proposal"].startswith("none: no CUDA")


def test_dry_run_checks_packed_attention_and_the_head_loss(dry_run):
    report, _, _ = dry_run
    backends = report["results"]["attention-packed-check"]["backends"]
    for name in ("sdpa", "eager"):
        b = backends[name]
        assert b["ok"] and b["forward_max_abs_diff"] <= b["tolerance"] < b["without_restart_max_abs_diff"], b
        assert b["backward_ok"] and b["backward_grad_rel_diff"] < 1e-3
    loss = report["results"]["fused-head-loss"]["contenders"]
    for head in ("frozen_head", "trained_head"):
        r = loss["tuner"]["results"][head]
        assert r["loss_rel_err"] < 1e-2 and r["grad_hidden_rel_err"] < 5e-2, r
    assert loss["liger"]["status"].startswith("skipped") and loss["cce"]["status"].startswith("skipped")


@pytest.mark.smollm2
def test_smollm2_shape_is_the_real_models(smol_model_dir):
    real = json.loads((Path(smol_model_dir) / "config.json").read_text())
    ours = gpu_check.SMOLLM2_135M
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "head_dim", "vocab_size", "max_position_embeddings", "tie_word_embeddings", "model_type"):
        assert ours[key] == real[key], key
    assert ours["rope_theta"] == real["rope_parameters"]["rope_theta"]


def test_llama_3_2_1b_config_builds_the_published_model(tmp_path):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    (tmp_path / "config.json").write_text(json.dumps(gpu_check.LLAMA_3_2_1B))
    config = AutoConfig.from_pretrained(str(tmp_path))
    rope = getattr(config, "rope_parameters", None) or config.rope_scaling
    assert rope["rope_type"] == "llama3" and rope["factor"] == 32.0
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in model.parameters())
    assert params == 1_235_814_400  # Llama-3.2-1B's published parameter count
    norms = sum(p.numel() for n, p in model.named_parameters() if "norm" in n)
    # The MFU formula's dense FLOPs are 6 per weight of every matrix product, the tied head included.
    flops = gpu_check.flops_per_token(gpu_check.LLAMA_3_2_1B, "full", 2048, 1.0, [1])
    assert flops["dense"] == 6 * (params - norms)
