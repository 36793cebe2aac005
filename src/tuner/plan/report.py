"""What `tuner info` prints: model and tokenizer, parameters, the memory plan (and whether it
fits the device), and the prepared data when it is there."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from tuner.config.schema import TunerConfig
from tuner.errors import UserError
from tuner.plan.facts import ModelFacts, count_parameters, describe_model, fmt_bytes, parse_size
from tuner.plan.memory import (GRPOPlan, MemoryPlan, PlanLine, grpo_plan, mapped_source_bytes, plan_memory,
                               resolve_precision)


# --------------------------------------------------------------------------- device


def detect_device_memory(spec: str | None) -> tuple[int, str]:
    """(bytes, what it is): --device-memory, else the CUDA device, else this machine's RAM."""
    if spec:
        return parse_size(spec), f"--device-memory {spec}"
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return int(props.total_memory), f"CUDA device 0 ({props.name})"
    import psutil

    return int(psutil.virtual_memory().total), "this machine's RAM (no CUDA device)"


def fit_line(plan: MemoryPlan, cfg: TunerConfig, size: int, what: str) -> str:
    share = plan.total / size
    if plan.total <= size:
        return f"fits: {fmt_bytes(plan.total)} of {fmt_bytes(size)} ({share:.0%}) on {what}"
    hints = []
    if not cfg.training.gradient_checkpointing:
        hints.append("gradient_checkpointing: true")
    if cfg.training.micro_batch_size > 1:
        hints.append("a smaller micro_batch_size (with gradient_accumulation_steps)")
    if cfg.adapter.adapter is None:
        hints.append("adapter: lora (or qlora)")
    elif cfg.adapter.adapter == "lora" and not cfg.adapter.load_in_8bit:
        hints.append("adapter: qlora with load_in_4bit: true")
    hint = f"; try {', '.join(hints)}" if hints else ""
    return f"does NOT fit: {fmt_bytes(plan.total)} needed, {fmt_bytes(size)} on {what} ({share:.0%}){hint}"


# --------------------------------------------------------------------------- data


def data_lines(cfg: TunerConfig, facts: ModelFacts) -> list[str]:
    """Rows, tokens and steps from the prepared-dataset cache, when it is there (never prepares)."""
    from tuner.data import cache, templates
    from tuner.data.labels import trained_count
    from tuner.data.load import local_sources
    from tuner.data.pack import Batches
    from tuner.data.pipeline import split_eval
    from tuner.train.step_plan import StepPlan

    d, t = cfg.data, cfg.training
    if d.pretraining_dataset:  # streamed while training: nothing prepared to read
        rows = t.max_steps * t.micro_batch_size * t.gradient_accumulation_steps if t.max_steps else 0
        return [f"streamed     pretraining_dataset {d.pretraining_dataset[0].path}: {rows:,} packed rows of "
                f"{d.sequence_len} tokens per process ({rows * d.sequence_len:,} tokens), tokenized while training runs",
                f"steps        {t.max_steps} (max_steps)"]
    data_ids = []
    for i, ds in enumerate(d.datasets):
        local = local_sources(ds, i, "datasets")
        if local is None:
            return [f"datasets[{i}] is a hub dataset ({ds.path}): its fingerprint needs the dataset loaded, "
                    "so the prepared cache is not checked here (`tuner inspect` shows the data)"]
        data_ids += [f"file:{cache.file_sha256(src.file)}" for src in local]
    template = templates.resolve(d, facts.tokenizer)
    fp, _ = cache.fingerprint(cfg, "datasets", facts.tokenizer_files, data_ids, template)
    root = Path(d.dataset_prepared_path)
    if not (root / fp).is_dir():
        return [f"not prepared yet ({root / fp} does not exist): `tuner preprocess` prepares it, then info shows "
                "rows, tokens and steps"]
    found = cache.load(root, fp)
    if found is None:
        return [f"{root / fp} is incomplete and was removed; `tuner preprocess` prepares it again"]
    rows, meta = found
    stats = meta.get("stats", {})
    if d.test_datasets:
        train, n_eval = rows, "test_datasets"
    else:
        train, held = split_eval(rows, d.val_set_size, t.seed)
        n_eval = "no evaluation rows" if held is None else f"{held.num_rows:,} held out (val_set_size)"
    if cfg.objective == "grpo":  # prompts: a step takes micro_batch_size x gradient_accumulation_steps / G of them
        from tuner.train.objectives.grpo import Settings

        s = Settings.of(cfg)
        per_step = t.micro_batch_size * t.gradient_accumulation_steps // s.num_generations
        plan = StepPlan.build(train.num_rows, t.model_copy(update={"micro_batch_size": per_step,
                                                                    "gradient_accumulation_steps": 1}), 1,
                              repeats=s.num_iterations)
        tokens = sum(len(ids) for ids in train["input_ids"])
        again = f" x num_iterations {s.num_iterations}" if s.num_iterations > 1 else ""
        return [f"prepared     {root / fp}",
                f"rows         {stats.get('rows', rows.num_rows):,} prompts prepared; {train.num_rows:,} train",
                f"tokens       {tokens:,} prompt tokens (longest {max(map(len, train['input_ids'])):,})",
                f"steps        {plan.steps_per_epoch:,} per epoch ({train.num_rows:,} prompts / {per_step} prompts per "
                f"step{again}, one process); {plan.total_steps:,} in this run"]
    if "labels" not in train.column_names:  # pairs (rl:, reward models) or classified texts: one unit per row
        plan = StepPlan.build(train.num_rows, t, 1)
        tokens = sum(len(ids) for c in train.column_names if c.endswith("input_ids") for ids in train[c])
        return [f"prepared     {root / fp}",
                f"rows         {stats.get('rows', rows.num_rows):,} prepared; {train.num_rows:,} train, {n_eval}",
                f"tokens       {tokens:,} train tokens",
                f"steps        {plan.steps_per_epoch:,} per epoch ({train.num_rows:,} rows / micro_batch_size "
                f"{t.micro_batch_size} / gradient_accumulation_steps {t.gradient_accumulation_steps}, one process); "
                f"{plan.total_steps:,} in this run"]
    batches = Batches(train, facts.tokenizer.pad_token_id, d.sequence_len, d.sample_packing,
                      d.pad_to_multiple_of, d.pad_to_sequence_len, d.batch_flattening)
    plan = StepPlan.build(batches.units, t, 1)
    tokens = sum(batches.lengths)
    labels = train.with_format("numpy")["labels"]
    trained = trained_count(labels)
    lines = [
        f"prepared     {root / fp}",
        f"rows         {stats.get('rows', rows.num_rows):,} prepared; {train.num_rows:,} train, {n_eval}",
        f"tokens       {tokens:,} train tokens, {trained:,} trained ({trained / max(tokens, 1):.0%})",
        f"steps        {plan.steps_per_epoch:,} per epoch ({batches.units:,} "
        f"{'packed rows' if d.sample_packing else 'rows'} / micro_batch_size {t.micro_batch_size} / "
        f"gradient_accumulation_steps {t.gradient_accumulation_steps}, one process); "
        f"{plan.total_steps:,} in this run",
        f"per step     {tokens / plan.steps_per_epoch:,.0f} tokens, {trained / plan.steps_per_epoch:,.0f} trained (average)",
    ]
    if d.sample_packing:
        lines.append(f"packing      {batches.efficiency:.1%} of the token slots hold real tokens")
    return lines


# --------------------------------------------------------------------------- the report


def _config_lines(config: Any, sequence_len: int) -> list[str]:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    get = lambda *names: next((getattr(text, n) for n in names if getattr(text, n, None) is not None), None)  # noqa: E731
    heads = get("num_attention_heads")
    hidden = get("hidden_size")
    head_dim = get("head_dim") or (hidden // heads if hidden and heads else None)
    context = get("max_position_embeddings", "n_positions", "max_sequence_length")
    rope = get("rope_parameters", "rope_scaling")
    theta = get("rope_theta")
    if isinstance(rope, dict):
        rope_text = ", ".join(f"{k} {v}" for k, v in rope.items() if v is not None)
    else:
        rope_text = "none" if theta is None else ""
    if theta is not None and "rope_theta" not in rope_text:
        rope_text = (rope_text + ", " if rope_text else "") + f"rope_theta {theta}"
    tied = getattr(text, "tie_word_embeddings", getattr(config, "tie_word_embeddings", None))
    lines = [
        f"layers {get('num_hidden_layers', 'n_layer')}, hidden size {hidden}, intermediate {get('intermediate_size')}, "
        f"heads {heads} (head dim {head_dim}), KV heads {get('num_key_value_heads') or heads}",
        f"vocabulary {get('vocab_size'):,}, context length {context:,}" if context else f"vocabulary {get('vocab_size')}",
        f"tied input/output embeddings: {'yes' if tied else 'no'}; RoPE: {rope_text or 'none'}"
        + (f"; sliding window {get('sliding_window')}" if get("sliding_window") else ""),
    ]
    if context and sequence_len > context:
        lines.append(f"WARNING: sequence_len {sequence_len} is longer than the model's context length {context}")
    return lines


def grpo_lines(g: GRPOPlan, p: Any, precision: str) -> list[str]:
    """rl: grpo: what one optimizer step does on one process, before its memory plan."""
    a = {"bf16": 2, "fp16": 2}.get(precision, 4)
    return [
        f"GRPO step (per process): {g.prompts} prompt(s) x num_generations {g.generations} = {g.completions} "
        f"completions (micro_batch_size x gradient_accumulation_steps), each up to max_completion_length "
        f"{g.max_completion_length} tokens after a prompt of up to sequence_len {g.prompt_len}",
        f"  generation     {fmt_bytes(g.kv_cache):>11}  KV cache: {len(p.layers)} layers x 2 x {p.kv_heads} KV heads x "
        f"{p.head_dim} head dim x ({g.prompt_len} + {g.max_completion_length}) tokens x {g.completions} completions "
        f"x {a} B, all of the step's completions at once; freed before training",
        f"  reference      {fmt_bytes(g.reference_bytes):>11}  {g.reference}",
        *([f"  reward models  {fmt_bytes(g.reward_model_bytes):>11}  {g.reward_models}"] if g.reward_models else []),
        "",
    ]


def grpo_plan_lines(g: GRPOPlan, p: Any) -> list[PlanLine]:
    """The training plan's lines with GRPO's loss, reference and the two peaks (generation, training)."""
    batch = g.train.tokens // (g.prompt_len + g.max_completion_length)  # micro_batch_size
    extra = (" + reference" if g.reference_bytes else "") + (" + reward models" if g.reward_model_bytes else "")
    out = []
    for line in g.train.lines:
        if line.name == "loss logits":
            line = PlanLine(line.name, line.bytes, f"completion log-probs: full logits of {batch} x "
                                                   f"(max_completion_length {g.max_completion_length} + 1) = "
                                                   f"{batch * (g.max_completion_length + 1):,} positions x {p.vocab:,} "
                                                   "vocabulary (fp32 log-softmax kept for backward)")
        elif line.name == "total":
            if g.reference_bytes:
                out.append(PlanLine("reference", g.reference_bytes, g.reference))
            if g.reward_model_bytes:
                out.append(PlanLine("reward models", g.reward_model_bytes, g.reward_models))
            line = PlanLine("training total", g.train_total, line.note + extra)
        out.append(line)
    out.append(PlanLine("generation total", g.generation_total, "runtime + weights + optimizer state"
                        + extra + " + KV cache + step overhead"))
    out.append(PlanLine("total", g.total, "the larger of the two: generation's KV cache is freed before the training "
                                          "forward"))
    return out


def info_report(cfg: TunerConfig, device_memory: str | None) -> str:
    """What `tuner info` prints: model and tokenizer, parameters, memory plan, data."""
    size, size_what = detect_device_memory(device_memory)
    facts = describe_model(cfg)
    params = count_parameters(cfg, facts)
    precision, precision_note = resolve_precision(cfg)
    grpo = grpo_plan(cfg, params, precision) if cfg.objective == "grpo" else None
    plan = grpo.train if grpo else plan_memory(cfg, params, precision,
                                               mapped_source=mapped_source_bytes(cfg, facts, params))
    t, d = cfg.training, cfg.data

    out = ["model"]
    base = facts.base
    where = {"gguf": "converted from GGUF once, cached", "hub": "hub cache", "folder": "local folder"}[base.kind]
    out.append(f"  base_model       {base.requested}")
    if str(base.path) != base.requested:
        out.append(f"  folder           {base.path} ({where})")
    out.append(f"  model class      {facts.model_class}: {facts.model_class_how}")
    out.append(f"  tokenizer class  {facts.tokenizer_class}: {facts.tokenizer_class_how}; "
               f"{len(facts.tokenizer):,} tokens" + (f" ({len(facts.new_token_ids)} added)" if facts.new_token_ids else ""))
    for k, line in enumerate(_config_lines(facts.config, d.sequence_len)):
        out.append(f"  {'config' if k == 0 else '':<15}  {line}")
    stored = facts.stored
    if stored is not None and stored.files:
        dtypes = ", ".join(f"{k} {v[0]:,} params" for k, v in sorted(stored.by_dtype.items(), key=lambda kv: -kv[1][1]))
        out.append(f"  stored weights   {stored.main_dtype}: {stored.tensors:,} tensors, {stored.parameters:,} parameters "
                   f"({dtypes}), {fmt_bytes(stored.bytes_on_disk)} on disk in {len(stored.files)} safetensors file(s)")
    elif stored is not None and stored.other_files:
        out.append(f"  stored weights   {', '.join(stored.other_files[:4])} (not safetensors: tuner reads only safetensors "
                   "headers without loading)")
    else:
        out.append("  stored weights   unknown (no safetensors headers available here)")

    out.append("")
    out.append("parameters")
    out.append(f"  total            {params.total:,}" + (f" (base {params.base_total:,})" if params.total != params.base_total else ""))
    out.append(f"  method           {params.method}")
    share = params.trainable / max(params.total, 1)
    out.append(f"  trainable        {params.trainable:,} ({share:.2%})")
    if params.score_params:
        out.append(f"  head             score: {params.score_params:,} parameters, "
                   f"{'trained (counted as trainable)' if params.score_trains else 'frozen'}"
                   + ("; saved with the adapter (peft modules_to_save)" if cfg.adapter.adapter else ""))
    shown = params.targets[:12]
    out.append(f"  targets          {', '.join(shown)}" + (f", ... ({len(params.targets)} in all)" if len(params.targets) > 12 else "")
               + (f" - {params.target_count} modules" if cfg.adapter.adapter else ""))

    out.append("")
    prec = {"bf16": "bf16 mixed precision", "fp16": "fp16 mixed precision", "no": "fp32 (no mixed precision)"}[precision]
    quant = " on a 4-bit base" if cfg.adapter.load_in_4bit else " on an 8-bit base" if cfg.adapter.load_in_8bit else ""
    lines = plan.lines
    if grpo is not None:
        out += grpo_lines(grpo, params, plan.precision)
        rows = (f"micro_batch_size {t.micro_batch_size} completions x ({grpo.prompt_len} prompt + "
                f"{grpo.max_completion_length} completion tokens)")
        lines = grpo_plan_lines(grpo, params)
    else:
        rows = f"micro_batch_size {t.micro_batch_size} x sequence_len {d.sequence_len}"
    out.append(
        f"memory plan: one optimizer step, {rows} = "
        f"{plan.tokens:,} token slots per micro-batch, {prec}{quant}, {cfg.model.attn_implementation} attention, "
        f"gradient checkpointing {'on' if t.gradient_checkpointing else 'off'}, "
        f"{'sample packing' if d.sample_packing else 'flattened batches' if d.batch_flattening else 'padded batches'}"
    )
    width = max(len(line.name) for line in lines)
    for line in lines:
        out.append(f"  {line.name:<{width}}  {fmt_bytes(line.bytes):>11}  {line.note}")
    fits = fit_line(plan if grpo is None else replace(plan, total=grpo.total), cfg, size, size_what)
    out.append(f"  {'device':<{width}}  {fmt_bytes(size):>11}  {fits}")
    notes = list(plan.notes)
    if precision_note:
        notes.insert(0, precision_note)
    if grpo is not None:
        notes.append("worst case: every prompt sequence_len tokens and every completion max_completion_length tokens; "
                     "reward models count their weights, not their scoring forward; the formulas are in "
                     "tuner/plan/memory.py (grpo_plan)")
    else:
        notes.append("worst case: every row padded to sequence_len and every position trained; the formulas are in "
                     "tuner/plan/memory.py")
    import torch

    if not torch.cuda.is_available() and not device_memory:
        notes.append("on CPU, while memory is plentiful glibc keeps freed activation blocks in its heap for reuse (faster; "
                     "RSS can read up to about twice the plan); once less than a quarter of memory is available, tuner "
                     "train fixes glibc's mmap threshold at 256 KiB and RSS follows the plan (tuner/train/malloc.py)")
    out += [f"  note: {n}" for n in notes]

    out.append("")
    out.append("data")
    try:
        out += [f"  {line}" for line in data_lines(cfg, facts)]
    except UserError as err:
        out.append(f"  cannot check the prepared data: {err}")
    return "\n".join(out)
