"""Preprocessing throughput: tuner vs TRL's SFT dataset preparation, same tokenizer, cold.

Two datasets of 20,000 rows each: alpaca rows, and multi-turn conversations (2-4 exchanges).

    /work/bench-venv/bin/python bench/preprocess_throughput.py            # 20,000 alpaca rows, 3 repetitions
    /work/bench-venv/bin/python bench/preprocess_throughput.py --quick    # 1 repetition

Each measurement is a fresh process with fresh cache folders (its own dataset_prepared_path
and HF_DATASETS_CACHE), alternating tuner and TRL:
  tuner_cli     `python -m tuner preprocess <yml>` (whole process: rows / wall seconds)
  tuner_phases  the same work in-process, phase by phase (bench/_tuner_prep.py)
  trl           load_dataset("json") + map to prompt/completion + SFTTrainer._prepare_dataset
                (bench/_trl_prep.py), whole process and phase by phase
Then the time for a fresh process to load tuner's prepared data from its cache: import
torch; import tuner (+transformers, datasets); load the config; resolve the base and the
tokenizer; `prepare` (fingerprint and load_from_disk).

Chat data: tuner `type: chat_template` (SmolLM2's own template, every assistant turn
trained); TRL gets the same `messages` as a conversational language-modelling dataset,
which it renders with the same template and tokenizes. TRL's `assistant_only_loss` needs a
template with `{% generation %}` markers, which SmolLM2's lacks, so TRL builds no label mask
there: it does less work than tuner for the same rows (the comparison favours TRL).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def tuner_config(path: Path, data: Path, prepared: Path, kind: str, seq_len: int) -> None:
    dataset = f"  - path: {data}\n    type: alpaca\n" if kind == "alpaca" else (
        f"  - path: {data}\n    type: chat_template\n    field_messages: messages\n")
    path.write_text(
        f"base_model: {C.BASE_MODEL_SPEC}\ndatasets:\n{dataset}dataset_prepared_path: {prepared}\n"
        f"sequence_len: {seq_len}\nadapter: lora\nlora_target_linear: true\nlearning_rate: 2.0e-4\n"
        "max_steps: 1\nbf16: auto\n",
        encoding="utf-8",
    )


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="1 repetition")
    ap.add_argument("--sequence-len", type=int, default=512)
    ap.add_argument("--data-seed", type=int, default=1234)
    ap.add_argument("--tuner-venv", default=str(C.REPO / ".venv"))
    ap.add_argument("--bench-venv", default="/work/bench-venv")
    ap.add_argument("--workdir", default="/tmp/tuner-bench/preprocess")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if a.quick:
        a.repeats = 1
    tuner_py, bench_py = C.python_of(a.tuner_venv), C.python_of(a.bench_venv)
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    env = C.bench_env()

    base = C.base_folder(tuner_py, env)
    alpaca = C.generate_alpaca(a.rows, a.data_seed, Path(base) / "tokenizer.json")
    data = {"alpaca": work / f"alpaca_{a.rows}.jsonl", "chat": work / f"chat_{a.rows}.jsonl"}
    C.write_jsonl(alpaca, data["alpaca"])
    C.write_jsonl(chat_rows(alpaca, a.rows, a.data_seed), data["chat"])
    print(f"base folder: {base}\ndata: {a.rows} rows ({', '.join(f'{k}: {v}' for k, v in data.items())})")
    for k, v in C.describe_distribution().items():
        print(f"  {k}: {v}")

    kinds = ["alpaca"]
    skipped = None
    chat_cfg = work / "chat_validate.yml"
    tuner_config(chat_cfg, data["chat"], work / "unused", "chat", a.sequence_len)
    v = subprocess.run([tuner_py, "-m", "tuner", "validate", str(chat_cfg)], env=env, capture_output=True, text=True)
    if v.returncode == 0:
        kinds.append("chat")
    else:
        skipped = (v.stderr.strip().splitlines() or ["(no message)"])[-1]
        print(f"chat: skipped, `tuner validate` rejects `type: chat_template`: {skipped}")

    results: dict = {k: {"tuner_cli": [], "tuner_phases": [], "trl": [], "tuner_cached": []} for k in kinds}
    failures: list[str] = []
    for kind in kinds:
        for rep in range(a.repeats):
            order = ["tuner_cli", "trl", "tuner_phases"] if rep % 2 == 0 else ["trl", "tuner_phases", "tuner_cli"]
            for what in order:
                tag = f"{kind}-{what}-rep{rep + 1}"
                cache = fresh(work, f"{tag}-hfcache")
                prepared = fresh(work, f"{tag}-prepared")
                run_env = C.bench_env(HF_DATASETS_CACHE=str(cache))
                out = work / f"{tag}.json"
                log = work / "logs" / f"{tag}.log"
                cfg = work / f"{tag}.yml"
                seq_len = a.sequence_len if kind == "alpaca" else 2 * a.sequence_len  # no conversation dropped
                tuner_config(cfg, data[kind], prepared, kind, seq_len)
                if what == "tuner_cli":
                    cmd = [tuner_py, "-m", "tuner", "preprocess", str(cfg)]
                elif what == "tuner_phases":
                    cmd = [tuner_py, str(C.BENCH / "_tuner_prep.py"), str(cfg), "--out", str(out), "--expect", "cold"]
                else:
                    cmd = [bench_py, str(C.BENCH / "_trl_prep.py"), "--data", str(data[kind]), "--kind", kind,
                           "--tokenizer", base, "--max-length", str(seq_len), "--workdir", str(cache / "out"),
                           "--out", str(out)]
                print(f"[{kind} rep {rep + 1}] {what} ...", end=" ", flush=True)
                rc, wall, trace = C.run_worker(cmd, env=run_env, log_path=log)
                if rc != 0:
                    print("FAILED")
                    failures.append(f"{tag}: exit {rc}: {C.tail(log, 3)}")
                    continue
                entry = {"wall": wall, "rows_per_s": a.rows / wall, "peak_rss_mb": trace.peak() / 2**20}
                if out.is_file():
                    entry.update(C.read_json(out))
                results[kind][what].append(entry)
                print(f"{wall:.1f} s wall, {a.rows / wall:,.0f} rows/s")
                if what == "tuner_phases":
                    # A fresh process loading the data just prepared, from tuner's cache.
                    out2 = work / f"{tag}-cached.json"
                    cmd = [tuner_py, str(C.BENCH / "_tuner_prep.py"), str(cfg), "--out", str(out2), "--expect", "cached"]
                    rc, wall, trace = C.run_worker(cmd, env=run_env, log_path=work / "logs" / f"{tag}-cached.log")
                    if rc == 0:
                        results[kind]["tuner_cached"].append({"wall": wall, **C.read_json(out2)})
                    else:
                        failures.append(f"{tag}-cached: exit {rc}")

    # Report.
    def med(values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    print()
    summary: dict = {}
    for kind in kinds:
        r = results[kind]
        cli, trl, ph, cached = r["tuner_cli"], r["trl"], r["tuner_phases"], r["tuner_cached"]
        if not (cli and trl):
            print(f"{kind}: incomplete ({len(cli)} tuner, {len(trl)} TRL runs)")
            continue
        s = {
            "tuner_cli_wall": med([x["wall"] for x in cli]),
            "trl_wall": med([x["wall"] for x in trl]),
            "tuner_prepare_s": med([x["phases"]["prepare"] for x in ph]),
            "trl_prepare_s": med([x["phases"]["load_dataset"] + x["phases"]["to_prompt_completion"]
                                  + x["phases"]["sft_prepare_dataset"] for x in trl]),
        }
        s["tuner_rows_per_s"] = a.rows / s["tuner_cli_wall"]
        s["trl_rows_per_s"] = a.rows / s["trl_wall"]
        s["tuner_prepare_rows_per_s"] = a.rows / s["tuner_prepare_s"]
        s["trl_prepare_rows_per_s"] = a.rows / s["trl_prepare_s"]
        s["ratio_whole_process"] = s["tuner_rows_per_s"] / s["trl_rows_per_s"]
        s["ratio_data_stage"] = s["tuner_prepare_rows_per_s"] / s["trl_prepare_rows_per_s"]
        s["rows_out"] = {"tuner": ph[0]["rows"] if ph else None, "trl": trl[0]["rows"]}
        s["trained_tokens"] = {"tuner": ph[0]["trained_tokens"] if ph else None, "trl": trl[0]["trained_tokens"]}
        summary[kind] = s
        print(f"{kind}: {a.rows:,} rows, cold, median of {len(cli)}")
        C.print_table(
            ["", "whole process s", "rows/s", "data stage s", "rows/s (data stage)", "rows out", "trained tokens"],
            [["tuner", C.fmt(s["tuner_cli_wall"]), C.fmt(s["tuner_rows_per_s"]), C.fmt(s["tuner_prepare_s"]),
              C.fmt(s["tuner_prepare_rows_per_s"]), str(s["rows_out"]["tuner"]), str(s["trained_tokens"]["tuner"])],
             ["TRL", C.fmt(s["trl_wall"]), C.fmt(s["trl_rows_per_s"]), C.fmt(s["trl_prepare_s"]),
              C.fmt(s["trl_prepare_rows_per_s"]), str(s["rows_out"]["trl"]), str(s["trained_tokens"]["trl"])]],
        )
        print(f"  tuner / TRL rows/s: whole process {s['ratio_whole_process']:.2f}x, data stage {s['ratio_data_stage']:.2f}x")
        print("  data stage = tuner: prepare() (fingerprint, load, tokenize, save, reload); "
              "TRL: load_dataset + map to prompt/completion + SFTTrainer._prepare_dataset")
        if ph:
            print("  tuner phases (s, median): " + ", ".join(
                f"{k} {med([x['phases'][k] for x in ph]):.2f}" for k in ph[0]["phases"]))
        print("  TRL phases (s, median): " + ", ".join(
            f"{k} {med([x['phases'][k] for x in trl]):.2f}" for k in trl[0]["phases"]))
        if cached:
            ph_c = {k: med([x["phases"][k] for x in cached]) for k in cached[0]["phases"]}
            beyond = sum(v for k, v in ph_c.items() if k != "import_torch")
            own = ph_c["load_config"] + ph_c["resolve_base"] + ph_c["load_tokenizer"] + ph_c["prepare"]
            s["cached_load"] = {"wall": med([x["wall"] for x in cached]), "phases": ph_c,
                                "beyond_import_torch": beyond, "tuner_own_work": own}
            print(f"  fresh process loading tuner's prepared {kind} data from its cache: "
                  f"{s['cached_load']['wall']:.2f} s wall; import torch {ph_c['import_torch']:.2f} s, "
                  f"everything after it {beyond:.2f} s, of which tuner's own work (config, base, tokenizer, "
                  f"prepare) {own:.2f} s: " + ", ".join(f"{k} {v:.3f}" for k, v in ph_c.items()))
        print()
    if skipped:
        print(f"chat: skipped ({skipped})")
    for f in failures:
        print(f"FAILED: {f}")
    Path(a.json or work / "results.json").write_text(json.dumps(
        {"settings": vars(a), "distribution": C.describe_distribution(), "results": results, "summary": summary,
         "chat_skipped": skipped, "failures": failures, "tuner_source": C.tuner_source(), "when": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2))
    print(f"all results: {a.json or work / 'results.json'}")


if __name__ == "__main__":
    main()
