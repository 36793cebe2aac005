"""Config schema and loading: every error names key, line, value and what is allowed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from tuner.config import ConfigError, dump_config, load_config
from tuner.config.load import parse_yaml, validate_raw


def class_names(data: dict) -> list:
    """The class-name check the CLI passes to validation (tuner.models.resolve)."""
    from tuner.models.resolve import class_name_problems

    return class_name_problems(data.get("model_type"), data.get("tokenizer_type"))


BASE = """\
base_model: /models/x
datasets:
  - path: data.jsonl
    type: alpaca
learning_rate: 2.0e-4
num_epochs: 1
"""


def problems(text: str, overrides: list[str] | None = None, tmp_path=None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        if overrides is not None:
            path = tmp_path / "c.yml"
            path.write_text(text)
            load_config(path, overrides, checks=[class_names])
        else:
            validate_raw(parse_yaml(text, "c.yml"), checks=[class_names])
    return info.value.lines


def ok(text: str):
    return validate_raw(parse_yaml(text, "c.yml"), checks=[class_names])


def test_minimal_config_gets_defaults():
    cfg = ok(BASE)
    assert cfg.model.base_model == "/models/x"
    assert cfg.data.datasets[0].type == "alpaca"
    assert cfg.data.sequence_len == 512
    assert cfg.data.excess_length_strategy == "drop"
    assert cfg.training.learning_rate == 2e-4
    assert cfg.training.optimizer == "adamw_torch_fused"
    assert cfg.model.trust_remote_code is False
    assert cfg.adapter.adapter is None


def test_axolotl_style_scientific_notation_is_a_number():
    # YAML 1.1 reads `1e-4` as a string; Axolotl configs write it that way all the time.
    cfg = ok(BASE.replace("2.0e-4", "1e-4"))
    assert cfg.training.learning_rate == pytest.approx(1e-4)


def test_unknown_key_gets_did_you_mean_and_line():
    lines = problems(BASE + "lora_rr: 4\n")
    assert len(lines) == 1
    assert lines[0].startswith("lora_rr (line 7): unknown top-level key")
    assert "Did you mean 'lora_r'" in lines[0]


def test_unknown_dataset_key_names_the_path():
    lines = problems(BASE.replace("    type: alpaca\n", "    type: alpaca\n    feild: x\n"))
    assert lines == ["datasets[0].feild (line 5): unknown dataset key. Did you mean 'field'?"]


def test_axolotl_key_not_supported_yet_differs_from_unknown():
    lines = problems(BASE + "rl: gdpo\n")
    assert "rl (line 7)" in lines[0]
    assert "Axolotl key tuner does not support yet" in lines[0]
    assert "unknown" not in lines[0]


def test_empty_axolotl_key_is_accepted():
    # Axolotl example configs are full of empty keys (`hub_model_id:`): they ask for nothing.
    cfg = ok(BASE + "hub_model_id:\nflash_attention:\nstrict: false\n")
    assert "hub_model_id" not in cfg.to_flat() and "strict" not in cfg.to_flat()


def test_literal_error_lists_allowed_values_and_did_you_mean():
    lines = problems(BASE.replace("type: alpaca", "type: alpacca"))
    assert lines == [
        "datasets[0].type (line 4): 'alpacca' is not valid: expected one of alpaca, completion, chat_template, "
        "input_output; or expected a mapping of keys to values. Did you mean 'alpaca'?"
    ]


@pytest.mark.parametrize(
    "line, expected",
    [
        ("micro_batch_size: 2.5", "micro_batch_size (line 7): 2.5 is not valid: expected a whole number."),
        ("micro_batch_size: 0", "micro_batch_size (line 7): 0 is not valid: must be > 0."),
        ("bf16: maybe", "bf16 (line 7): 'maybe' is not valid: expected true or false; or expected one of auto."),
        ("excess_length_strategy: cut", "excess_length_strategy (line 7): 'cut' is not valid: expected one of drop, truncate, raise, split."),
        ("warmup_ratio: 1.5", "warmup_ratio (line 7): 1.5 is not valid: must be < 1.0."),
        ("sequence_len: .nan", "sequence_len (line 7): nan is not a finite number"),
    ],
)
def test_bad_values(line, expected):
    assert expected in problems(BASE + line + "\n")


def test_missing_required_keys():
    lines = problems("datasets:\n  - path: x.jsonl\n    type: alpaca\nnum_epochs: 1\n")
    assert "base_model: required key is missing" in lines
    assert "learning_rate: required key is missing" in lines


@pytest.mark.parametrize(
    "extra, key, words",
    [
        ("bf16: true\nfp16: true\n", "fp16", "both true"),
        ("lora_r: 16\n", "lora_r", "no adapter"),
        ("adapter: lora\n", "adapter", "lora_target_linear"),
        ("warmup_steps: 10\nwarmup_ratio: 0.1\n", "warmup_ratio", "both set"),
        ("adapter: lora\nlora_target_modules: '(unclosed'\n", "lora_target_modules", "regular expression"),
    ],
)
def test_cross_field_rules(extra, key, words):
    lines = problems(BASE + extra)
    assert any(line.startswith(key) and words in line for line in lines), lines


def test_neither_epochs_nor_steps():
    lines = problems(BASE.replace("num_epochs: 1\n", ""))
    assert any(line.startswith("num_epochs") and "neither num_epochs nor max_steps" in line for line in lines)


def test_class_names_are_checked_with_did_you_mean():
    lines = problems(BASE + "model_type: LlamaForCausalLm\ntokenizer_type: LlamaTokenizr\n")
    assert any("model_type (line 7)" in l and "Did you mean 'LlamaForCausalLM'" in l for l in lines)
    assert any("tokenizer_type (line 8)" in l and "'LlamaTokenizer'" in l for l in lines)


def test_non_causal_lm_class_is_rejected():
    lines = problems(BASE + "model_type: BertForMaskedLM\n")
    assert "not a causal language model" in lines[0] and "ForCausalLM" in lines[0]


def test_yaml_python_tag_is_refused_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    text = BASE + f"output_dir: !!python/object/apply:os.system ['touch {marker}']\n"
    lines = problems(text)
    assert "not valid YAML" in lines[0] and "safe_load" in lines[0]
    assert not marker.exists()


def test_broken_yaml_names_line():
    lines = problems("base_model: x\ndatasets: [\n")
    assert lines[0].startswith("line ")
    assert "not valid YAML" in lines[0]


def test_duplicate_keys_last_wins_with_a_warning_naming_both_lines():
    # Issue 15: PyYAML and Axolotl take the last value; tuner does too, and says so.
    cfg = ok(BASE + "learning_rate: 1.0e-3\n")
    assert cfg.training.learning_rate == pytest.approx(1e-3)
    dupes = [str(n) for n in cfg.notices if "duplicate key" in n.message]
    assert dupes == ["learning_rate (line 7): duplicate key: also on line 5; the last value (line 7) wins"]


def test_top_level_must_be_mapping():
    assert "mapping" in problems("- a\n- b\n")[0]


def test_overrides_win_and_are_typed(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text(BASE)
    cfg = load_config(path, ["--learning_rate", "1e-4", "--datasets.0.path=other.jsonl", "--bf16", "--max_steps", "7"])
    assert cfg.training.learning_rate == pytest.approx(1e-4)
    assert cfg.data.datasets[0].path == "other.jsonl"
    assert cfg.training.bf16 is True
    assert cfg.training.max_steps == 7


def test_bad_override_names_command_line(tmp_path):
    lines = problems(BASE, ["--micro_batch_size", "zero"], tmp_path)
    assert lines == ["micro_batch_size (command line): 'zero' is not valid: expected a whole number."]


def test_dump_round_trips(tmp_path):
    cfg = ok(BASE)
    text = dump_config(cfg)
    again = validate_raw(parse_yaml(text, "dump.yml"))
    assert again == cfg


def _run(args, cwd):
    return subprocess.run([sys.executable, "-m", "tuner", *args], capture_output=True, text=True, cwd=cwd)


def test_validate_cli_exit_code_2_no_traceback(tmp_path):
    (tmp_path / "bad.yml").write_text(BASE + "lora_rr: 3\n")
    res = _run(["validate", "bad.yml"], tmp_path)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert "lora_rr (line 7)" in res.stderr


def test_validate_and_help_do_not_import_torch(tmp_path):
    (tmp_path / "ok.yml").write_text(BASE + "model_type: LlamaForCausalLM\n")
    # `--help` makes argparse raise SystemExit: the torch check runs after it either way.
    code = textwrap.dedent(
        """
        import os, sys
        if os.environ.get("PLANT_TORCH"):
            import torch  # the control: proves the check below can fail
        from tuner.cli import main
        try:
            rc = main(sys.argv[1:])
        except SystemExit as exit:
            rc = exit.code
        if "torch" in sys.modules:
            sys.exit("torch was imported")
        print("RC", rc)
        """
    )
    for args in (["validate", "ok.yml"], ["--help"]):
        res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=tmp_path)
        assert "torch was imported" not in res.stderr, res.stderr
        assert res.returncode == 0 and "RC 0" in res.stdout, res.stderr
        planted = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=tmp_path,
                                 env={**os.environ, "PLANT_TORCH": "1"})
        assert planted.returncode != 0 and "torch was imported" in planted.stderr
    res = _run(["validate", "ok.yml"], tmp_path)
    assert res.returncode == 0 and "learning_rate: 0.0002" in res.stdout


def test_missing_config_file(tmp_path):
    res = _run(["validate", "nope.yml"], tmp_path)
    assert res.returncode == 2 and "config file not found" in res.stderr and "Traceback" not in res.stderr
