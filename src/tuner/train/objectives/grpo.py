"""Online RL: GRPO (`rl: grpo`), with TRL 1.16's loss (grpo_trainer._compute_loss).

Each optimizer step, on each process:
  1. rollout (`GRPO.rollout`, before the step's micro-batches): the step's prompts (the plan
     hands out micro_batch_size * gradient_accumulation_steps / num_generations of them) are
     each sampled `num_generations` times by the policy, adapter on, in eval mode, with the KV
     cache and left padding, until EOS or `max_completion_length`. A completion's mask keeps its
     tokens up to and including its first EOS. Sampling is seeded by (seed, step, process), so a
     resumed run samples what an uninterrupted one does; the global RNG is left as it was.
  2. the reward functions (tuner.train.rewards) score every completion; the weighted sum (NaN
     where a function returned None, left out as TRL's nansum) is the reward; advantages are
     reward - its group's mean, divided by the group's std + 1e-4 (`scale_rewards: group`), the
     whole step's std (`batch`), or not (`none`). Groups whose rewards are all equal are counted.
  3. the completions become `gradient_accumulation_steps` micro-batches of micro_batch_size,
     each trained with use_cache=False on exactly the sampled tokens (prompt + completion,
     position ids from the attention mask, as generation used them).
  4. `num_iterations` k > 1 (TRL's mu): the rollout's micro-batches train k optimizer steps in a
     row (the step plan gives those steps the same prompts); the policy's log-probs of the
     completions at rollout time (no gradient, the same forward as training) are kept with them
     as the old policy's, and the rollout is saved in checkpoints taken inside the k steps, so a
     resumed run trains on the batch the uninterrupted one did.

The loss of a micro-batch, per completion token t (logits divided by the temperature, as TRL):
    ratio_t = exp(logp_t - old_t)   old_t: the rollout's log-probs (num_iterations 1: logp_t.detach(), ratio 1)
    loss_t  = -min(ratio_t * A, clip(ratio_t, 1 - epsilon, 1 + epsilon_high) * A) + beta * kl_t
    kl_t    = exp(ref_t - logp_t) - (ref_t - logp_t) - 1  (k3; ref: adapter disabled, or a frozen copy),
              times ratio_t (`use_bias_correction_kl`, TRL 1.16's default: same value, unbiased gradient)
aggregated as TRL's `loss_type`, each normalised over the whole optimizer step (all micro-batches,
all processes) by what TRL normalises it by:
    grpo     per-completion token means, / completions of the step
    dapo     token sums, / completion tokens of the step
    dr_grpo  token sums, / (completions of the step * max_completion_length)
    bnpo     per-micro-batch token means, / micro-batches of the step (TRL: "local batch")
With equal micro-batches these equal TRL's per-micro-batch losses divided by the accumulation
steps, and its DDP mean (tests/e2e/test_grpo_parity.py holds tuner to TRL's loss and gradients).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tuner.config.schema import TrainingBlock, TunerConfig
from tuner.train.objectives.base import combined_loss
from tuner.train.precision import compute_dtype
from tuner.train.rewards import RewardFunction, load_reward_functions, reward_models, score

# loss_type -> the count its summed term is normalised by
NORMALISED_BY = {"grpo": "completions", "dapo": "completion_tokens", "bnpo": "micro_batches",
                 "dr_grpo": "completion_slots"}
SAMPLES_FILE = "samples.jsonl"


@dataclass(frozen=True)
class Settings:
    """`trl:`'s GRPO keys with TRL 1.16's defaults filled in."""

    num_generations: int
    max_completion_length: int
    temperature: float
    top_p: float
    top_k: int
    min_p: float | None
    repetition_penalty: float
    beta: float
    epsilon_low: float
    epsilon_high: float
    loss_type: str
    scale_rewards: str
    mask_truncated: bool
    bias_corrected_kl: bool
    samples: int
    num_iterations: int

    @classmethod
    def of(cls, cfg: TunerConfig) -> Settings:
        p = cfg.preference
        trl = p.trl
        assert trl is not None  # validation: rl: grpo needs trl.reward_funcs
        eps = 0.2 if trl.epsilon is None else trl.epsilon
        scale = {True: "group", False: "none", None: "group"}.get(trl.scale_rewards, trl.scale_rewards)  # type: ignore[arg-type]
        return cls(trl.num_generations or 8, trl.max_completion_length or 512,
                   1.0 if trl.temperature is None else trl.temperature, 1.0 if trl.top_p is None else trl.top_p,
                   trl.top_k or 0, trl.min_p, 1.0 if trl.repetition_penalty is None else trl.repetition_penalty,
                   p.beta, eps, eps if trl.epsilon_high is None else trl.epsilon_high, trl.loss_type or "dapo",
                   str(scale), trl.mask_truncated_completions, trl.use_bias_correction_kl is not False,
                   trl.num_completions_to_print or 4, trl.num_iterations or 1)


class Prompts:
    """The prepared prompts by unit index (a unit: one prompt). `batch` names the prompts; the
    rollout turns them into training micro-batches."""

    def __init__(self, rows: Any):
        self.rows = rows
        self.units = rows.num_rows
        self.efficiency = 1.0
        self._lengths = [len(ids) for ids in rows["input_ids"]]

    def batch(self, units: list[int]) -> dict[str, torch.Tensor]:
        return {"prompts": torch.tensor(units, dtype=torch.long)}

    def tokens(self, units: list[int]) -> int:
        """The prompts' own tokens (once each). Not the step's throughput: the loop counts a rollout
        objective's tokens from its sequence_tokens (each completion's prompt + completion)."""
        return sum(self._lengths[u] for u in units)


def completion_logps(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                     completion_len: int, temperature: float) -> torch.Tensor:
    """log p of each completion token (the last `completion_len` columns), from logits / temperature."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
                   logits_to_keep=completion_len + 1).logits
    logits = logits[:, -completion_len - 1 : -1].float() / temperature
    targets = input_ids[:, -completion_len:]
    return torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None])[..., 0]


class GRPOLoss(torch.nn.Module):
    """The model and GRPO's loss: forward(micro-batch) -> the micro-batch's sums."""

    def __init__(self, model: Any, cfg: TunerConfig, objective: GRPO):
        super().__init__()
        from tuner.train.objectives.preference import (
            Reference,  # the reference of preference training
        )

        self.model = model
        self.objective = objective
        self.reference = Reference(model, cfg) if objective.s.beta else None

    def _reference_logps(self, inputs: dict[str, torch.Tensor], completion_len: int, temperature: float) -> torch.Tensor:
        ref = self.reference
        assert ref is not None
        with torch.no_grad():
            if ref.kind == "copy":
                frozen = ref.frozen[0]
                if next(frozen.parameters()).device != inputs["input_ids"].device:
                    frozen.to(inputs["input_ids"].device)
                return completion_logps(frozen, **inputs, completion_len=completion_len, temperature=temperature)
            with ref._active(self.model):
                return completion_logps(self.model, **inputs, completion_len=completion_len, temperature=temperature)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                completion_mask: torch.Tensor, advantages: torch.Tensor, old_logps: torch.Tensor | None = None,
                **stats: torch.Tensor) -> dict[str, torch.Tensor]:
        s = self.objective.s
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        length = completion_mask.shape[1]
        logps = completion_logps(self.model, **inputs, completion_len=length, temperature=s.temperature)
        mask = completion_mask.to(logps.dtype)
        ratio = torch.exp(logps - (logps.detach() if old_logps is None else old_logps.to(logps.dtype)))
        adv = advantages.to(logps.dtype)[:, None]
        per_token = -torch.min(ratio * adv, torch.clamp(ratio, 1 - s.epsilon_low, 1 + s.epsilon_high) * adv)
        kl = torch.zeros_like(logps)
        if s.beta:
            ref = self._reference_logps(inputs, length, s.temperature)
            kl = torch.exp(ref - logps) - (ref - logps) - 1
            if s.bias_corrected_kl:  # TRL 1.16's default: value unchanged (ratio 1), gradient the unbiased one
                kl = kl * ratio
            per_token = per_token + s.beta * kl
        masked = per_token * mask
        if s.loss_type == "grpo":
            loss = (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).sum()
        elif s.loss_type == "bnpo":
            loss = masked.sum() / mask.sum().clamp(min=1.0)
        else:
            loss = masked.sum()
        low = ((ratio < 1 - s.epsilon_low) & (adv < 0)).to(mask.dtype) * mask
        high = ((ratio > 1 + s.epsilon_high) & (adv > 0)).to(mask.dtype) * mask
        return {"loss": loss, "kl": (kl.detach() * mask).sum(), "clip/low": low.sum(), "clip/high": high.sum(), **stats}


class GRPO:
    """rl: grpo."""

    name = "grpo"
    head = None  # a causal LM
    # completion_tokens: the trained tokens; sequence_tokens: what the training forward processed (prompt +
    # completion, padding not counted, once per completion), the loop's tokens/s for this objective
    count_names = ("completion_tokens", "completions", "micro_batches", "completion_slots", "sequence_tokens")

    def __init__(self, cfg: TunerConfig):
        self._cfg = cfg
        self.s = Settings.of(cfg)
        trl = cfg.preference.trl
        assert trl is not None and (trl.reward_funcs or trl.reward_model_path)
        self.funcs: list[RewardFunction] = load_reward_functions(
            trl.reward_funcs or [], trl.reward_weights, Path(cfg.config_dir) if cfg.config_dir else None,
            trl.reward_model_path)
        self.loss_terms = {"loss": NORMALISED_BY[self.s.loss_type]}
        self.stat_names = ("reward", "reward_sq", "reward_n", *(f"rewards/{f.short}/{k}" for f in self.funcs
                                                                 for k in ("sum", "sq", "n")),
                           "advantage", "advantage_sq", "groups", "zero_std_groups", "length", "truncated")
        self.sum_names = ("loss", "kl", "clip/low", "clip/high", *self.stat_names)
        self.tokenizer: Any = None
        self.prompts: Prompts | None = None
        self._since_report = {"generation_seconds": 0.0, "max_length": 0}
        self._samples: list[dict[str, Any]] = []
        self._first_step: int | None = None  # the step this process started from (samples after it are dropped)
        self._trimmed = False
        self.updates_per_rollout = self.s.num_iterations
        self._rollout: list[dict[str, torch.Tensor]] = []  # num_iterations > 1: the batch the next steps reuse
        self._rollout_step = -1  # the step that sampled it
        self._rollout_longest = 0  # its longest completion on any process

    # ------------------------------------------------------------------ what the loop asks of an objective

    def batches(self, rows: Any, cfg: TunerConfig, pad_token_id: int, evaluation: bool) -> Prompts:
        self.prompts = Prompts(rows)
        self.pad_token_id = pad_token_id
        return self.prompts

    def wrap(self, model: torch.nn.Module) -> GRPOLoss:
        return GRPOLoss(model, self._cfg, self)

    def sums(self, output: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return output

    def counts(self, batch: dict[str, torch.Tensor]) -> dict[str, int]:
        mask = batch["completion_mask"]
        return {"completion_tokens": int(mask.sum()), "completions": mask.shape[0], "micro_batches": 1,
                "completion_slots": mask.shape[0] * self.s.max_completion_length,
                "sequence_tokens": int(batch["attention_mask"].sum())}

    def plan_training(self, t: TrainingBlock, tokenizer: Any) -> TrainingBlock:
        """The step plan's view of training: units are prompts, all of a step's in one group (the
        rollout makes the micro-batches). Also keeps the tokenizer, to decode completions."""
        self.tokenizer = tokenizer
        prompts = t.micro_batch_size * t.gradient_accumulation_steps // self.s.num_generations
        return t.model_copy(update={"micro_batch_size": prompts, "gradient_accumulation_steps": 1})

    # ------------------------------------------------------------------ the rollout

    def rollout(self, module: Any, batches: list[dict[str, torch.Tensor]], accelerator: Any,
                step: int) -> list[dict[str, torch.Tensor]]:
        """The step's prompts -> its training micro-batches (see the module docstring): sampled at
        every num_iterations-th step, the kept ones in between."""
        if self._first_step is None:
            self._first_step = step
        k = self.s.num_iterations
        if step % k:
            assert self._rollout_step == step - step % k, (self._rollout_step, step)
            self._since_report["max_length"] = max(self._since_report["max_length"], self._rollout_longest)
            return self._rollout
        out = self._sample(module, batches, accelerator, step)
        if k > 1:  # the old policy's log-probs, kept with the batch for the steps that train on it again
            started = time.perf_counter()
            model = accelerator.unwrap_model(module).model
            with torch.no_grad(), accelerator.autocast():
                for batch in out:
                    inputs = {n: batch[n].to(accelerator.device) for n in ("input_ids", "attention_mask", "position_ids")}
                    batch["old_logps"] = completion_logps(model, **inputs, completion_len=batch["completion_mask"].shape[1],
                                                          temperature=self.s.temperature).float().cpu()
            self._since_report["generation_seconds"] += time.perf_counter() - started  # the rollout's time
            self._rollout, self._rollout_step = out, step
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The kept rollout, for a checkpoint taken between its num_iterations steps (else nothing)."""
        if self.s.num_iterations == 1 or not self._rollout:
            return {}
        out = {"rollout_step": torch.tensor(self._rollout_step), "longest": torch.tensor(self._rollout_longest)}
        for i, batch in enumerate(self._rollout):
            out.update({f"{i}/{name}": value.contiguous().clone() for name, value in batch.items()})
        return out

    def load_state_dict(self, tensors: dict[str, torch.Tensor], step: int) -> None:
        """Take back the rollout a checkpoint at `step` kept; one is needed inside a num_iterations cycle."""
        k = self.s.num_iterations
        if step % k == 0:
            return
        sampled = step - step % k
        if "rollout_step" not in tensors or int(tensors["rollout_step"]) != sampled:
            from tuner.errors import UserError

            raise UserError(f"resume_from_checkpoint: the checkpoint of step {step} does not hold the batch sampled at "
                            f"step {sampled + 1}, which trl.num_iterations: {k} trains on again; it was not saved by "
                            "this run's settings. Resume from a checkpoint at a multiple of num_iterations.")
        count = 1 + max(int(name.split("/")[0]) for name in tensors if "/" in name)
        self._rollout = [{name.split("/", 1)[1]: value for name, value in tensors.items() if name.startswith(f"{i}/")}
                         for i in range(count)]
        self._rollout_step, self._rollout_longest = sampled, int(tensors["longest"])

    def _sample(self, module: Any, batches: list[dict[str, torch.Tensor]], accelerator: Any,
                step: int) -> list[dict[str, torch.Tensor]]:
        """Generate, score and batch the step's completions."""
        assert self.prompts is not None and self.tokenizer is not None
        started = time.perf_counter()
        model = accelerator.unwrap_model(module).model
        t, s = self._cfg.training, self.s
        units = [int(u) for b in batches for u in b["prompts"].tolist()]
        rows = [self.prompts.rows[u] for u in units for _ in range(s.num_generations)]
        prompt_ids, prompt_mask = _left_padded([r["input_ids"] for r in rows], self.pad_token_id)
        completion_ids = self._generate(model, prompt_ids, prompt_mask, accelerator, t.seed, step)
        completion_mask, truncated = _completion_mask(completion_ids, self._eos_ids(model))
        lengths = completion_mask.sum(-1)
        if s.mask_truncated:  # cut completions do not train (their rewards still count, as TRL)
            completion_mask = completion_mask * (~truncated)[:, None]
        ids_list = [ids[: int(n)].tolist() for ids, n in zip(completion_ids, lengths)]
        texts = self.tokenizer.batch_decode(ids_list, skip_special_tokens=True)
        prompts = [json.loads(r["prompt"]) for r in rows]
        completions = [[{"role": "assistant", "content": c}] if isinstance(p, list) else c
                       for p, c in zip(prompts, texts)]
        for reward_model in reward_models(self.funcs):  # frozen, on the training device and compute dtype
            reward_model.load(accelerator.device, compute_dtype(accelerator.mixed_precision))
        per_func = torch.tensor(score(self.funcs, prompts, completions, ids_list, _columns(rows)),
                                dtype=torch.float32).T  # (completions, functions)
        rewards, advantages, zero_std = self._advantages(per_func, accelerator)
        generation_seconds = time.perf_counter() - started
        self._since_report["generation_seconds"] += generation_seconds
        longest = lengths.max().reshape(1)
        if accelerator.num_processes > 1:  # the longest completion of the step on any process
            longest = accelerator.gather(longest.to(accelerator.device))
        self._since_report["max_length"] = max(self._since_report["max_length"], int(longest.max()))
        self._samples = [{"step": step + 1, "prompt": prompts[i], "completion": texts[i],
                          "rewards": {f.short: _number(per_func[i, k]) for k, f in enumerate(self.funcs)},
                          "reward": _number(rewards[i]), "advantage": float(advantages[i])}
                         for i in range(0, len(rows), max(1, len(rows) // s.samples))][: s.samples]
        stats = self._stats(per_func, rewards, advantages, zero_std, lengths, truncated)
        full_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        full_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        out = []
        for start in range(0, len(rows), t.micro_batch_size):
            part = slice(start, start + t.micro_batch_size)
            out.append(_micro_batch(full_ids[part], full_mask[part], prompt_ids.shape[1], completion_mask[part],
                                    advantages[part]))
        out[0].update(stats)  # the step's rollout statistics travel (and are summed) with its first micro-batch
        self._rollout_longest = int(longest.max())
        return out

    def _eos_ids(self, model: Any) -> list[int]:
        ids = {self.tokenizer.eos_token_id}
        configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        ids.update(configured if isinstance(configured, list) else [configured])
        return sorted(i for i in ids if i is not None)

    def _generate(self, model: Any, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, accelerator: Any,
                  seed: int, step: int) -> torch.Tensor:
        from transformers import GenerationConfig

        s = self.s
        config = GenerationConfig(max_new_tokens=s.max_completion_length, do_sample=True, temperature=s.temperature,
                                  top_p=s.top_p, top_k=s.top_k, min_p=s.min_p, repetition_penalty=s.repetition_penalty,
                                  pad_token_id=self.pad_token_id, eos_token_id=self._eos_ids(model), use_cache=True)
        device = accelerator.device
        devices = [device] if device.type == "cuda" else []
        was_training = model.training
        model.eval()
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad(), accelerator.autocast():
                torch.manual_seed(sampling_seed(seed, step, accelerator.process_index))
                out = model.generate(input_ids=prompt_ids.to(device), attention_mask=prompt_mask.to(device),
                                     generation_config=config)
        finally:
            model.train(was_training)
        completion = out[:, prompt_ids.shape[1]:].cpu()
        if completion.shape[1] == 0:  # every sequence ended at once (max_new_tokens reached with nothing)
            completion = torch.full((out.shape[0], 1), self.pad_token_id, dtype=out.dtype)
        return completion

    def _advantages(self, per_func: torch.Tensor, accelerator: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rewards, advantages, is the group's std 0) of this process's completions, computed as TRL
        1.16 (sum_then_normalize) over the step's completions of all processes."""
        s, n = self.s, per_func.shape[0]
        local = per_func.to(accelerator.device)
        gathered = accelerator.gather(local) if accelerator.num_processes > 1 else local
        weights = torch.tensor([f.weight for f in self.funcs], dtype=torch.float32, device=gathered.device)
        unscorable = torch.isnan(gathered).all(dim=1)
        rewards = (gathered * weights[None]).nansum(dim=1)
        rewards[unscorable] = math.nan
        groups = rewards.view(-1, s.num_generations)
        mean = torch.nanmean(groups, dim=1).repeat_interleave(s.num_generations)
        if s.scale_rewards == "batch":
            std = _nanstd(rewards).expand_as(rewards)
        else:
            std = _nanstd(groups, dim=1).repeat_interleave(s.num_generations)
        advantages = rewards - mean
        if s.scale_rewards != "none":
            advantages = advantages / (std + 1e-4)
        zero_std = torch.isclose(_nanstd(groups, dim=1), torch.zeros(groups.shape[0], device=groups.device))
        advantages = torch.nan_to_num(advantages, nan=0.0)
        mine = slice(accelerator.process_index * n, (accelerator.process_index + 1) * n)
        per_group = zero_std.repeat_interleave(s.num_generations)[mine].view(-1, s.num_generations)[:, 0]
        return rewards[mine].cpu(), advantages[mine].cpu(), per_group.cpu()

    def _stats(self, per_func: torch.Tensor, rewards: torch.Tensor, advantages: torch.Tensor, zero_std: torch.Tensor,
               lengths: torch.Tensor, truncated: torch.Tensor) -> dict[str, torch.Tensor]:
        f64 = lambda v: torch.as_tensor(v, dtype=torch.float64)
        stats = {}
        ok = ~torch.isnan(rewards)
        stats.update({"reward": f64(rewards[ok].sum()), "reward_sq": f64((rewards[ok] ** 2).sum()),
                      "reward_n": f64(ok.sum())})
        for k, f in enumerate(self.funcs):
            col = per_func[:, k]
            good = ~torch.isnan(col)
            stats.update({f"rewards/{f.short}/sum": f64(col[good].sum()), f"rewards/{f.short}/sq": f64((col[good] ** 2).sum()),
                          f"rewards/{f.short}/n": f64(good.sum())})
        stats.update({"advantage": f64(advantages.sum()), "advantage_sq": f64((advantages ** 2).sum()),
                      "groups": f64(zero_std.numel()), "zero_std_groups": f64(zero_std.sum()),
                      "length": f64(lengths.sum()), "truncated": f64(truncated.sum())})
        return stats

    # ------------------------------------------------------------------ what is logged

    def report(self, sums: dict[str, float], counts: dict[str, float], evaluation: bool) -> dict[str, float]:
        div = lambda a, b: a / b if b else math.nan
        std = lambda total, sq, n: math.sqrt(max(0.0, div(sq, n) - div(total, n) ** 2) * n / (n - 1)) if n > 1 else math.nan
        completions, tokens = counts.get("completions", 0.0), counts.get("completion_tokens", 0.0)
        out = {"loss": combined_loss(self, sums, counts), "reward": div(sums["reward"], sums["reward_n"]),
               "reward_std": std(sums["reward"], sums["reward_sq"], sums["reward_n"])}
        for f in self.funcs:
            n = sums[f"rewards/{f.short}/n"]
            out[f"rewards/{f.short}/mean"] = div(sums[f"rewards/{f.short}/sum"], n)
            out[f"rewards/{f.short}/std"] = std(sums[f"rewards/{f.short}/sum"], sums[f"rewards/{f.short}/sq"], n)
        out.update({
            "advantages/mean": div(sums["advantage"], completions),
            "advantages/std": std(sums["advantage"], sums["advantage_sq"], completions),
            "frac_reward_zero_std": div(sums["zero_std_groups"], sums["groups"]),
            "kl": div(sums["kl"], tokens),
            "clip_ratio/low_mean": div(sums["clip/low"], tokens), "clip_ratio/high_mean": div(sums["clip/high"], tokens),
            "clip_ratio/region_mean": div(sums["clip/low"] + sums["clip/high"], tokens),
            "completions/mean_length": div(sums["length"], completions),
            "completions/max_length": self._since_report["max_length"],
            "completions/clipped_ratio": div(sums["truncated"], completions),
            "generation_seconds": self._since_report["generation_seconds"],
        })
        if not evaluation:
            self._write_samples()
            self._since_report = {"generation_seconds": 0.0, "max_length": 0}
        return out

    def _write_samples(self) -> None:
        """The last rollout's sampled completions with their rewards, to output_dir/samples.jsonl (main process)."""
        from accelerate import PartialState

        if not self._samples or not PartialState().is_main_process:
            return
        path = Path(self._cfg.training.output_dir) / SAMPLES_FILE
        if not self._trimmed and path.exists():  # a resumed run: the samples of the steps it redoes go
            kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and json.loads(line)["step"] <= (self._first_step or 0)]
            path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        self._trimmed = True
        with path.open("a", encoding="utf-8") as f:
            for sample in self._samples:
                f.write(json.dumps(sample, ensure_ascii=False) + "\n")
        self._samples = []


def sampling_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed a step's sampling runs under, on one process: a function of the run's seed,
    the step and the process only, so a resumed run samples as an uninterrupted one."""
    return (seed * 1_000_003 + step * 7_919 + rank) % (2**63 - 1)


def _left_padded(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
    return ids, mask


def _completion_mask(ids: torch.Tensor, eos_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask keeping each completion's tokens up to and including its first EOS, whether it has no EOS)."""
    is_eos = torch.isin(ids, torch.tensor(eos_ids, dtype=ids.dtype))
    first = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1), torch.full((ids.shape[0],), ids.shape[1]))
    mask = (torch.arange(ids.shape[1])[None] <= first[:, None]).long()
    return mask, ~is_eos.any(dim=1)


def _micro_batch(ids: torch.Tensor, mask: torch.Tensor, prompt_width: int, completion_mask: torch.Tensor,
                 advantages: torch.Tensor) -> dict[str, torch.Tensor]:
    """One training micro-batch: columns that are padding in every row dropped (left of the
    prompts, right of the completions); position ids count the attended tokens, as generation did."""
    prompt_cols = mask[:, :prompt_width].any(dim=0).nonzero()
    first = int(prompt_cols[0]) if prompt_cols.numel() else prompt_width - 1
    completion_cols = completion_mask.any(dim=0).nonzero()
    width = int(completion_cols[-1]) + 1 if completion_cols.numel() else 1
    ids, mask = ids[:, first : prompt_width + width], mask[:, first : prompt_width + width]
    position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids,
            "completion_mask": completion_mask[:, :width], "advantages": advantages}


def _columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """The rows' other columns as reward-function keyword arguments: {name: one value per completion}."""
    decoded = [json.loads(r["reward_columns"]) for r in rows]
    names = list(dict.fromkeys(k for d in decoded for k in d))
    return {name: [d.get(name) for d in decoded] for name in names}


def _nanstd(values: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """TRL's nanstd: Bessel-corrected, NaNs left out (NaN with fewer than two values)."""
    mean = torch.nanmean(values, dim=dim, keepdim=True)
    variance = torch.nanmean((values - mean) ** 2, dim=dim, keepdim=True)
    count = torch.sum(~torch.isnan(values), dim=dim, keepdim=True)
    correction = torch.where(count > 1, count / (count - 1), torch.full_like(count, math.nan, dtype=values.dtype))
    out = torch.sqrt(variance * correction)
    return out.squeeze(dim) if dim is not None else out.squeeze()


def _number(value: torch.Tensor) -> float | None:
    v = float(value)
    return None if math.isnan(v) else v
