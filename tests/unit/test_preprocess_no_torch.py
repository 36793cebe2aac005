"""`tuner preprocess` prepares data without importing torch: the data stage needs a tokenizer,
and a generic fast tokenizer (tokenizer_config.json's TokenizersBackend / PreTrainedTokenizerFast)
is loaded by its own class, not through AutoTokenizer, whose module imports torch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

from helpers import alpaca_rows, write_jsonl

CHECK = textwrap.dedent(
    """
    import os, sys
    if os.environ.get("PLANT_TORCH"):
        import torch  # the control: proves the check below can fail
    from tuner.cli import main
    rc = main(sys.argv[1:])
    if "torch" in sys.modules:
        sys.exit("torch was imported")
    print("RC", rc)
    """
)


def test_preprocess_does_not_import_torch(tmp_path, smol_tokenizer_dir, smol_tokenizer):
    base = tmp_path / "base"
    shutil.copytree(smol_tokenizer_dir, base)
    (base / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert json.loads((base / "tokenizer_config.json").read_text())["tokenizer_class"] == "TokenizersBackend"
    data = write_jsonl(tmp_path / "data.jsonl", alpaca_rows(8))
    (tmp_path / "cfg.yml").write_text(
        f"base_model: {base}\ndatasets:\n  - path: {data}\n    type: alpaca\n"
        f"dataset_prepared_path: {tmp_path / 'prepared'}\nlearning_rate: 1.0e-4\nnum_epochs: 1\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", CHECK, "preprocess", "cfg.yml"], capture_output=True, text=True,
                         cwd=tmp_path, env=env)
    assert res.returncode == 0 and "RC 0" in res.stdout and "8 rows read, 8 kept" in res.stdout, res.stderr
    planted = subprocess.run([sys.executable, "-c", CHECK, "preprocess", "cfg.yml"], capture_output=True, text=True,
                             cwd=tmp_path, env={**env, "PLANT_TORCH": "1"})
    assert planted.returncode != 0 and "torch was imported" in planted.stderr
    # The tokenizer loaded by its class is the one AutoTokenizer gives: the same ids for the prepared rows.
    from datasets import load_from_disk

    (folder,) = [p for p in (tmp_path / "prepared").iterdir() if not p.name.startswith(".")]
    rows = load_from_disk(str(folder / "rows"))
    first = alpaca_rows(8)[0]
    assert rows[0]["input_ids"][-len(smol_tokenizer(first["output"])["input_ids"]) - 1:-1] == \
        smol_tokenizer(first["output"])["input_ids"]
