"""Preprocessing throughput: tuner vs Axolotl 0.19 vs TRL 1.16, same tokenizer, cold and cached.

Two datasets of 20,000 rows each: alpaca rows, and multi-turn conversations (2-4 exchanges).

    flock /tmp/team/cpu.lock /work/bench-venv/bin/python bench/preprocess_throughput.py   # 3 repetitions
    /work/bench-venv/bin/python bench/preprocess_throughput.py --quick --rows 2000         # a smoke run

Every measurement is a fresh process, each contender in its own venv, timed whole (wall from
spawn to exit) with the peak RSS of its process tree (sampled every 50 ms, workers included),
the contenders' order rotating between repetitions:
  tuner    `python -m tuner preprocess <yml>` (tuner's venv)
  axolotl  `axolotl preprocess <yml> --no-download` (/work/axolotl-venv; offline: HF_HUB_OFFLINE=1,
           AXOLOTL_DO_NOT_TRACK=1, DO_NOT_TRACK=1; data as `path: FILE` + `ds_type: json`)
  trl      load_dataset("json") + map to prompt/completion + SFTTrainer._prepare_dataset
           (bench/_trl_prep.py, /work/bench-venv)
cold: an empty prepared folder and an empty HF_DATASETS_CACHE; cached: the same command again
on what the cold run left (tuner's prepared folder, TRL's datasets cache). Axolotl's `preprocess`
never reads its prepared folder (axolotl/utils/data/shared.py skips it under `is_preprocess`), so
its second run prepares again, with only the raw JSON already in the datasets cache. Besides wall
seconds, the CPU seconds of each run's process tree (user + sys, workers included) are recorded:
on a machine others are using, they measure the work done better than wall time does.
Every contender gets the same `dataset_num_proc` (--num-proc, default 2: Axolotl's default on
this 2-core machine is os.cpu_count()). After each cold run the prepared rows are counted
(untimed: tuner's meta.json, bench/_axolotl_count.py, TRL's own count): rows and trained tokens
must agree for the comparison to be fair.

Chat data: `type: chat_template` with SmolLM2's own template for tuner and Axolotl (every
assistant turn and its <|im_end|> trained: roles_to_train [assistant], train_on_eos turn);
TRL gets the same `messages` as a conversational language-modelling dataset, which it renders
with the same template and tokenizes. TRL's `assistant_only_loss` needs a template with
`{% generation %}` markers, which SmolLM2's lacks, so TRL builds no label mask there: it does
less work than the others for the same rows (the comparison favours TRL).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C


def tuner_config(path: Path, data: Path, prepared: Path, kind: str, seq_len: int, num_proc: int | None = None) -> None:
    dataset = f"  - path: {data}\n    type: alpaca\n" if kind == "alpaca" else (
        f"  - path: {data}\n    type: chat_template\n    field_messages: messages\n"
        "    roles_to_train: [assistant]\n    train_on_eos: turn\n")
    path.write_text(
        f"base_model: {C.BASE_MODEL_SPEC}\ndatasets:\n{dataset}dataset_prepared_path: {prepared}\n"
        f"sequence_len: {seq_len}\nadapter: lora\nlora_target_linear: true\nlearning_rate: 2.0e-4\n"
        "max_steps: 1\nbf16: auto\n" + (f"dataset_num_proc: {num_proc}\n" if num_proc else ""),
        encoding="utf-8",
    )


def axolotl_config(path: Path, base: str, data: Path, prepared: Path, kind: str, seq_len: int, num_proc: int,
                   output_dir: Path) -> None:
    """The same preparation as tuner_config, in Axolotl 0.19's keys (the converted SmolLM2 folder as base)."""
    dataset = f"  - path: {data}\n    ds_type: json\n    type: alpaca\n" if kind == "alpaca" else (
        f"  - path: {data}\n    ds_type: json\n    type: chat_template\n    field_messages: messages\n"
        "    roles_to_train: [assistant]\n    train_on_eos: turn\n")
    path.write_text(
        f"base_model: {base}\ntokenizer_config: {base}\ndatasets:\n{dataset}"
        + ("chat_template: tokenizer_default\n" if kind == "chat" else "")
        + f"sequence_len: {seq_len}\nsample_packing: false\nval_set_size: 0\ndataset_prepared_path: {prepared}\n"
        f"dataset_num_proc: {num_proc}\noutput_dir: {output_dir}\nmicro_batch_size: 1\n"
        "gradient_accumulation_steps: 1\nnum_epochs: 1\nlearning_rate: 0.0002\nadapter: lora\n"
        "lora_target_linear: true\nlora_r: 8\nlora_alpha: 16\n",
        encoding="utf-8",
    )


def axolotl_env(**extra: str) -> dict[str, str]:
    return C.bench_env(AXOLOTL_DO_NOT_TRACK="1", DO_NOT_TRACK="1", **extra)


def chat_rows(alpaca: list[dict], n_rows: int, seed: int) -> list[dict]:
    """`n_rows` multi-turn conversations: 2 to 4 user/assistant exchanges each, taken in turn
    from the alpaca rows (user = instruction (+ input), assistant = the output cut to its
    first 60 words so a conversation stays within sequence_len), a system prompt in a third."""
    import random

    rng = random.Random(seed)
    out, i = [], 0
    for _ in range(n_rows):
        messages = [{"role": "system", "content": "You are a helpful assistant."}] if rng.random() < 1 / 3 else []
        for _ in range(rng.randint(2, 4)):
            r = alpaca[i % len(alpaca)]
            i += 1
            user = r["instruction"] + (f"\n\n{r['input']}" if r["input"] else "")
            answer = " ".join(r["output"].split()[:60])
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        out.append({"messages": messages})
    return out


def fresh(work: Path, name: str) -> Path:
    p = work / name
    shutil.rmtree(p, ignore_errors=True)
    p.mkdir(parents=True)
    return p


CONTENDERS = ("tuner", "axolotl", "trl")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="1 repetition")
    ap.add_argument("--kinds", default="alpaca,chat")
    ap.add_argument("--contenders", default=",".join(CONTENDERS))
    ap.add_argument("--num-proc", type=int, default=2, help="dataset_num_proc for every contender")
    ap.add_argument("--sequence-len", type=int, default=512)
    ap.add_argument("--data-seed", type=int, default=1234)
    ap.add_argument("--tuner-venv", default=str(C.REPO / ".venv"))
    ap.add_argument("--bench-venv", default="/work/bench-venv")
    ap.add_argument("--axolotl-venv", default="/work/axolotl-venv")
    ap.add_argument("--tuner-src", default=None,
                    help="also time tuner from this src folder (PYTHONPATH) as contender tuner_src: a change not yet "
                         "in the tree")
    ap.add_argument("--workdir", default="/tmp/tuner-bench/preprocess")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if a.quick:
        a.repeats = 1
    py = {"tuner": C.python_of(a.tuner_venv), "trl": C.python_of(a.bench_venv), "axolotl": C.python_of(a.axolotl_venv)}
    axolotl_cli = str(Path(a.axolotl_venv) / "bin" / "axolotl")
    contenders = [c for c in a.contenders.split(",") if c] + (["tuner_src"] if a.tuner_src else [])
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    env = C.bench_env()

    base = C.base_folder(py["tuner"], env)
    alpaca = C.generate_alpaca(a.rows, a.data_seed, Path(base) / "tokenizer.json")
    data = {"alpaca": work / f"alpaca_{a.rows}.jsonl", "chat": work / f"chat_{a.rows}.jsonl"}
    C.write_jsonl(alpaca, data["alpaca"])
    C.write_jsonl(chat_rows(alpaca, a.rows, a.data_seed), data["chat"])
    load_before = os.getloadavg()
    print(f"base folder: {base}\ndata: {a.rows} rows ({', '.join(f'{k}: {v}' for k, v in data.items())})\n"
          f"dataset_num_proc: {a.num_proc} for every contender; load average before: {load_before}")
    for k, v in C.describe_distribution().items():
        print(f"  {k}: {v}")

    kinds = [k for k in a.kinds.split(",") if k]
    results: dict = {k: {c: {"cold": [], "cached": []} for c in contenders} for k in kinds}
    failures: list[str] = []
    for kind in kinds:
        seq_len = a.sequence_len if kind == "alpaca" else 2 * a.sequence_len  # no conversation dropped
        for rep in range(a.repeats):
            order = contenders[rep % len(contenders):] + contenders[:rep % len(contenders)]
            for what in order:
                tag = f"{kind}-{what}-rep{rep + 1}"
                cache = fresh(work, f"{tag}-hfcache")
                prepared = fresh(work, f"{tag}-prepared")
                out = work / f"{tag}.json"
                cfg = work / f"{tag}.yml"
                if what in ("tuner", "tuner_src"):
                    tuner_config(cfg, data[kind], prepared, kind, seq_len, a.num_proc)
                    cmd, run_env = [py["tuner"], "-m", "tuner", "preprocess", str(cfg)], C.bench_env(HF_DATASETS_CACHE=str(cache))
                    if what == "tuner_src":
                        run_env["PYTHONPATH"] = str(Path(a.tuner_src).resolve())
                elif what == "axolotl":
                    axolotl_config(cfg, base, data[kind], prepared, kind, seq_len, a.num_proc, work / f"{tag}-out")
                    cmd, run_env = [axolotl_cli, "preprocess", str(cfg), "--no-download"], axolotl_env(
                        HF_DATASETS_CACHE=str(cache), HF_HOME=str(cache / "hf_home"))
                else:
                    cmd = [py["trl"], str(C.BENCH / "_trl_prep.py"), "--data", str(data[kind]), "--kind", kind,
                           "--tokenizer", base, "--max-length", str(seq_len), "--workdir", str(cache / "out"),
                           "--out", str(out), "--num-proc", str(a.num_proc)]
                    run_env = C.bench_env(HF_DATASETS_CACHE=str(cache))
                for state in ("cold", "cached"):
                    print(f"[{kind} rep {rep + 1}] {what} {state} ...", end=" ", flush=True)
                    load = os.getloadavg()[0]
                    before = resource.getrusage(resource.RUSAGE_CHILDREN)
                    rc, wall, trace = C.run_worker(cmd, env=run_env, log_path=work / "logs" / f"{tag}-{state}.log")
                    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the whole tree, once its workers are reaped
                    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
                    if rc != 0:
                        print("FAILED")
                        failures.append(f"{tag}-{state}: exit {rc}: {C.tail(work / 'logs' / f'{tag}-{state}.log', 3)}")
                        break
                    entry = {"wall": wall, "cpu_s": cpu, "rows_per_s": a.rows / wall, "peak_rss_mb": trace.peak() / 2**20,
                             "load_1min": load}
                    if state == "cold":
                        entry.update(counts(what, prepared, out, py["axolotl"], work / f"{tag}-counts.json"))
                    results[kind][what][state].append(entry)
                    print(f"{wall:.1f} s wall, {cpu:.1f} CPU s, {a.rows / wall:,.0f} rows/s, peak RSS "
                          f"{entry['peak_rss_mb']:,.0f} MiB, load {load:.1f}")

    def med(values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    print()
    summary: dict = {}
    for kind in kinds:
        r = results[kind]
        s = {c: {state: {"wall": med([x["wall"] for x in r[c][state]]), "cpu_s": med([x["cpu_s"] for x in r[c][state]]),
                         "peak_rss_mb": med([x["peak_rss_mb"] for x in r[c][state]]),
                         "runs": len(r[c][state])} for state in ("cold", "cached")} for c in contenders}
        for c in contenders:
            for state in ("cold", "cached"):
                s[c][state]["rows_per_s"] = a.rows / s[c][state]["wall"]
            first = r[c]["cold"][0] if r[c]["cold"] else {}
            s[c]["rows_out"], s[c]["trained_tokens"] = first.get("rows"), first.get("trained_tokens")
        s["ratios"] = {f"{t}_over_{c}": {**{state: s[t][state]["rows_per_s"] / s[c][state]["rows_per_s"]
                                            for state in ("cold", "cached")},
                                         "cold_cpu": s[c]["cold"]["cpu_s"] / s[t]["cold"]["cpu_s"]}
                       for t in contenders if t.startswith("tuner") for c in contenders if not c.startswith("tuner")}
        summary[kind] = s
        print(f"{kind}: {a.rows:,} rows, dataset_num_proc {a.num_proc}, median of {a.repeats} (whole process: "
              "spawn to exit; peak RSS: the process tree)")
        C.print_table(
            ["", "cold s", "cold rows/s", "cold CPU s", "cold peak RSS MiB", "cached s", "cached CPU s",
             "cached peak RSS MiB", "rows out", "trained tokens"],
            [[c, C.fmt(s[c]["cold"]["wall"]), C.fmt(s[c]["cold"]["rows_per_s"]), C.fmt(s[c]["cold"]["cpu_s"]),
              C.fmt(s[c]["cold"]["peak_rss_mb"]), C.fmt(s[c]["cached"]["wall"]), C.fmt(s[c]["cached"]["cpu_s"]),
              C.fmt(s[c]["cached"]["peak_rss_mb"]), str(s[c]["rows_out"]),
              str(s[c]["trained_tokens"])] for c in contenders],
        )
        for name, ratio in s.get("ratios", {}).items():
            print(f"  {name.replace('_over_', ' / ')} rows/s: cold {ratio['cold']:.2f}x, cached {ratio['cached']:.2f}x; "
                  f"CPU seconds, cold: {ratio['cold_cpu']:.2f}x fewer")
        print()
    load_after = os.getloadavg()
    print(f"load average before {load_before}, after {load_after}")
    for f in failures:
        print(f"FAILED: {f}")
    Path(a.json or work / "results.json").write_text(json.dumps(
        {"settings": vars(a), "distribution": C.describe_distribution(), "results": results, "summary": summary,
         "load_before": load_before, "load_after": load_after, "failures": failures, "tuner_source": C.tuner_source(),
         "when": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2))
    print(f"all results: {a.json or work / 'results.json'}")


def counts(what: str, prepared: Path, out: Path, axolotl_py: str, counts_json: Path) -> dict:
    """Rows and trained tokens a cold run wrote (read after it, untimed)."""
    if what.startswith("tuner"):
        metas = list(prepared.glob("*/meta.json"))
        stats = C.read_json(metas[0])["stats"] if len(metas) == 1 else {}
        return {"rows": stats.get("rows"), "trained_tokens": stats.get("trained_tokens")}
    if what == "axolotl":
        rc = subprocess.run([axolotl_py, str(C.BENCH / "_axolotl_count.py"), str(prepared), "--out", str(counts_json)],
                            check=False, env=C.bench_env(), capture_output=True, text=True).returncode
        found = C.read_json(counts_json) if rc == 0 else {}
        return {"rows": found.get("rows"), "trained_tokens": found.get("trained_tokens")}
    found = C.read_json(out) if out.is_file() else {}
    return {"rows": found.get("rows"), "trained_tokens": found.get("trained_tokens")}


if __name__ == "__main__":
    main()
