"""Where the time of one tuner training step goes: torch.profiler over a few steps of a real run.

    .venv/bin/python bench/profile_step.py CONFIG.yml [--steps 6] [--profile-from 3]

Runs `tuner.train.loop.train` on CONFIG unchanged (through its hooks), except that the optimizer steps from
--profile-from on are recorded with torch.profiler (CPU) and the run stops before saving.
Prints the operators by self CPU time, and the split between forward (incl. the loss),
backward and the optimizer.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--profile-from", type=int, default=3)
    ap.add_argument("--rows", type=int, default=25, help="operators to print")
    a = ap.parse_args()

    from torch.profiler import ProfilerActivity, profile, record_function

    from tuner.config import load_config
    from tuner.train.loop import train
    from tuner.train.setup import Hooks
    from tuner.train.objectives.base import combined_loss
    from tuner.train.step import Totals, accumulate_gradients as tuners_own

    cfg = load_config(a.config, ["--max_steps", str(a.steps), "--overwrite_output_dir", "true"])
    state = {"step": 0, "prof": None, "phase": {"forward+loss": 0.0, "backward": 0.0}, "wall": 0.0}

    def accumulate_gradients(model, batches, accelerator, objective):
        state["step"] += 1
        if state["step"] < a.profile_from:
            return tuners_own(model, batches, accelerator, objective)
        if state["prof"] is None:
            state["prof"] = profile(activities=[ProfilerActivity.CPU])
            state["prof"].__enter__()
        t0 = time.perf_counter()
        with record_function("tuner.step"):
            # the same work as tuner.train.step.accumulate_gradients (one process, any objective), timed in two phases
            counts: dict[str, float] = {}
            for b in batches:
                for k, v in objective.counts(b).items():
                    counts[k] = counts.get(k, 0) + v
            sums: dict[str, float] = {}
            for batch in batches:
                t = time.perf_counter()
                with accelerator.autocast():
                    out = objective.sums(model(**batch))
                    loss = sum(out[term] / counts[c] for term, c in objective.loss_terms.items())
                state["phase"]["forward+loss"] += time.perf_counter() - t
                t = time.perf_counter()
                accelerator.backward(loss)
                state["phase"]["backward"] += time.perf_counter() - t
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
        state["wall"] += time.perf_counter() - t0
        return Totals(sums, counts, combined_loss(objective, sums, counts))

    train(cfg, hooks=Hooks(accumulate=accumulate_gradients, save=False))
    prof = state["prof"]
    prof.__exit__(None, None, None)
    n = a.steps - a.profile_from + 1
    print(f"\n{n} profiled steps: forward + loss {state['phase']['forward+loss'] / n:.2f} s/step, "
          f"backward {state['phase']['backward'] / n:.2f} s/step (optimizer not included)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.rows))


if __name__ == "__main__":
    main()
