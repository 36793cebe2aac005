"""The quickstart config's first step, as a user runs it: everything on stderr is tuner's own
(its log lines and progress bar), and a run that does not quantize never imports
bitsandbytes (peft would import it, tuner.models.adapter.import_peft keeps it out)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.smollm2

# `tuner train`, through tuner's command line in this process, then which heavy modules it imported.
RUN = """
import sys
from tuner.cli import main
code = main(sys.argv[1:])
print("IMPORTED", " ".join(m for m in ("bitsandbytes", "torch._inductor.compile_fx", "matplotlib") if m in sys.modules))
sys.exit(code)
"""
PROGRESS = re.compile(r"^\s*\d+%\|.*\|\s*\d+/\d+ \[")  # tuner's tqdm bar over the steps


def foreign_lines(stderr: str) -> list[str]:
    """stderr lines not written by tuner: its log lines start with "[tuner] " (indented lines
    continue one of them), and its progress bar redraws itself with carriage returns."""
    out, in_tuner_message = [], False
    for line in re.split(r"[\r\n]+", stderr):
        if not line.strip():
            continue
        if line.startswith("[tuner] "):
            in_tuner_message = True
        elif PROGRESS.match(line):
            in_tuner_message = False
        elif not (in_tuner_message and line.startswith("  ")):
            out.append(line)
    return out


def test_foreign_lines_are_found():
    own = "[tuner] prepared dataset: x (reused)\n  total: 600 rows\n  0%|          | 0/1 [00:00<?, ?step/s]\r100%|##| 1/1 [00:02<00:00]\n"
    assert foreign_lines(own) == []
    noisy = own + "/x/transformers/modeling_utils.py:3303: FutureWarning: `is_gradient_checkpointing` is deprecated\n  warnings.warn(\n"
    assert foreign_lines(noisy) == ["/x/transformers/modeling_utils.py:3303: FutureWarning: `is_gradient_checkpointing` is deprecated",
                                    "  warnings.warn("]
    assert foreign_lines("Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'") != []


def test_quickstart_first_step_is_quiet_and_imports_no_bitsandbytes(tmp_path, smol_model_dir):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "TUNER_LOG_LEVEL")}
    env.update(HF_HUB_OFFLINE="1")
    args = ["train", "examples/quickstart.yml", "--dataset_prepared_path", str(tmp_path / "prepared"),
            "--output_dir", str(tmp_path / "out"), "--max_steps", "1", "--micro_batch_size", "1"]
    res = subprocess.run([sys.executable, "-c", RUN, *args], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert foreign_lines(res.stderr) == [], res.stderr[-3000:]
    imported = next(line for line in res.stdout.splitlines() if line.startswith("IMPORTED")).split()[1:]
    assert "bitsandbytes" not in imported and "torch._inductor.compile_fx" not in imported, imported
    assert "matplotlib" in imported  # the report was drawn: the check above ran over the whole run
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
