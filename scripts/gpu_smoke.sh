#!/usr/bin/env bash
# GPU smoke test for maintainers with a CUDA host (2+ GPUs). NOT run in CI: the project's CI
# machine has no GPU. Trains SmolLM2-135M-Instruct for 20 steps each with QLoRA (1 GPU),
# FSDP v2 (2 GPUs) and DeepSpeed ZeRO-3 (2 GPUs), with flash-attention when installed, and
# checks that the loss falls and that the outputs reload.
#
#   make install && pip install deepspeed  # (and flash-attn, optionally)
#   scripts/gpu_smoke.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WORK=$(mktemp -d /tmp/tuner-gpu-smoke.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
ATTN=sdpa
if $PY -c "import flash_attn" 2>/dev/null; then ATTN=flash_attention_2; fi
echo "attention: $ATTN; work dir: $WORK"

common=(--max_steps 20 --num_epochs null --logging_steps 1 --attn_implementation "$ATTN"
        --dataset_prepared_path "$WORK/prepared" --bf16 true)

check() {  # output_dir: loss falls and the output reloads
  $PY - "$1" <<'PYEOF'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
losses = [m["loss"] for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in m]
first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
assert last < first, f"loss did not fall: {first:.3f} -> {last:.3f}"
from transformers import AutoModelForCausalLM
if (out / "adapter_config.json").exists():
    from peft import AutoPeftModelForCausalLM
    AutoPeftModelForCausalLM.from_pretrained(out)
else:
    AutoModelForCausalLM.from_pretrained(out)
print(f"{out.name}: loss {first:.3f} -> {last:.3f}, reloads")
PYEOF
}

echo "== QLoRA, 1 GPU"
$PY -m tuner train examples/chat.yml "${common[@]}" --adapter qlora --load_in_4bit true --output_dir "$WORK/qlora"
check "$WORK/qlora"

echo "== FSDP v2, 2 GPUs"
$PY -m tuner train examples/chat.yml "${common[@]}" --adapter null --lora_target_linear null --lora_r null \
  --fsdp "[full_shard, auto_wrap]" --fsdp_config "{fsdp_version: 2}" --output_dir "$WORK/fsdp" --num-processes 2
check "$WORK/fsdp"

echo "== DeepSpeed ZeRO-3, 2 GPUs"
$PY -m tuner train examples/chat.yml "${common[@]}" --adapter null --lora_target_linear null --lora_r null \
  --deepspeed configs/deepspeed/zero3.json --output_dir "$WORK/zero3" --num-processes 2
check "$WORK/zero3"
echo "GPU smoke test passed"
