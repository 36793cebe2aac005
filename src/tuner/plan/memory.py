"""`tuner info`'s memory plan: how much memory one optimizer step needs, without loading
any weights.

What is read: config.json, the tokenizer, and the safetensors *headers* (dtype and shape of
every tensor; the tensor data is never read). A `.gguf` / `pkg:` base is converted once into
tuner's cache by `resolve_base`, as training would do. Parameter counts are exact: the model
is built on the meta device from its config and tuner's own adapter code
(`tuner.models.adapter.apply_adapter`) is applied to it, then `requires_grad` is counted.
QLoRA / 8-bit count as LoRA on the unquantized shapes; their weight bytes are those of the
quantized storage.

The memory plan
===============

Sizes are for one process and one micro-batch of T = micro_batch_size x sequence_len token
slots (every batch padded to sequence_len: the worst case) with K = micro_batch_size x
(sequence_len - 1) positions reaching the output head (every position trained: the worst
case). `a` is the compute dtype's size: 2 under bf16/fp16 autocast, 4 without mixed
precision, as `tuner.train.precision.mixed_precision` resolves it here. h = hidden
size, i = intermediate size, H = attention heads, d = head dim, S = sequence_len, V = vocabulary.

weights
    full fine-tuning: 4 B/param (fp32 master weights; autocast computes in `a`);
    LoRA: the base in the compute dtype (`a` B/param), adapter weights fp32;
    QLoRA: 0.5 B per linear weight of the decoder layers + block scales (NF4/FP4, blocks of
    64: 1 B per block and 4 B per 256 blocks with double quantization, else 4 B per block);
    8-bit: 1 B + one fp32 scale per output row; peft's k-bit preparation turns every other
    weight (embeddings, norms) to fp32.
gradients           4 B per trainable parameter (trainable weights are fp32 in every method).
optimizer state     AdamW: exp_avg + exp_avg_sq, 8 B per trainable parameter.

activations: what autograd saves for backward, per token of one decoder layer
    Derived from how transformers' Llama layers save tensors and checked to the byte against
    `torch.autograd.graph.saved_tensors_hooks` (tests/unit/test_info.py: full fine-tuning in
    bf16 and fp32, eager attention, unfrozen_parameters, LoRA in bf16 and fp32, LoRA with
    dropout on some targets, QLoRA). The layer is walked in order; what an operation keeps for
    its input's gradient is counted only once a gradient can flow there (from a trainable
    weight below or earlier in the layer), what it keeps for its weight's gradient whenever
    that weight trains:
      norms      each RMSNorm keeps its input in fp32 and 1/rms: 4h + 4; + 4h (the normalized
                 tensor) when its weight trains.
      linears    a linear keeps its input only when its weight trains or it has LoRA. Under
                 autocast each keeps its own cast copy (a * in): q, k and v cast the fp32 norm
                 output separately, and peft casts every LoRA input to fp32 and autocast casts
                 it back. Without autocast the linears reading one tensor share it (4 * in,
                 once). o_proj shares sdpa's saved output unless a LoRA cast copies it;
                 down_proj keeps the gated product (a * i).
      attention  sdpa: q, k, v and the output, a * H * d each (transformers repeats k and v
                 to all heads when there is a mask, i.e. with packing or padding), 4 * H of
                 logsumexp, and the additive mask the kernel builds from the boolean one,
                 a * S. eager: q, k, v, the fp32 softmax and its `a` copy: (4 + a) * H * S.
      MLP        gate output, act(gate) and up output (kept by the activation and the
                 product): 3 * o * i, where o, a linear's output size, is `a` except on a
                 k-bit base, whose bitsandbytes layers return the fp32 input dtype (o = 4).
      LoRA       + a * r per adapted linear (lora_B's input); dropout: + 4 * in (the mask);
                 DoRA: + 2 * o * out, and a * in * (in + r) per linear (peft's identity trick).
    SmolLM2-135M at sequence_len 256, every linear trained or adapted: 32,428 B/token/layer
    for full fine-tuning in bf16, 29,084 for LoRA, 38,300 for QLoRA.
    Outside the layers: the final norm, the hidden states gathered at trained positions
    (K * h in the final norm's dtype) with their indices, ids, rotary tables.
    Gradient checkpointing: a layer keeps only its input (r * h, r the residual stream's size:
    4 for full fine-tuning and k-bit bases, `a` for LoRA); backward recomputes one layer at a
    time.
    Selective recomputation (tuner's default without gradient checkpointing, torch_compile,
    a k-bit base or DoRA: tuner.train.loss.selective_recompute): a layer keeps its input
    (r * h), the output of every matmul (o * out per linear; LoRA: + a * r for A, and B's
    output only when r > h / 8) and of the attention kernel (sdpa: a * H * d + 4 * H; eager:
    + a * H * S of scores); the rest is recomputed one layer at a time in backward, where that
    layer's full set (the walk above) exists once. SmolLM2-135M LoRA in bf16: 12,932 B/token/
    layer kept instead of 29,196 (sequence_len 256, packed).
autocast weight copies
    Under autocast every fp32 matrix a matmul uses is cast to `a`: trainable ones once, cached
    until the forward ends; frozen ones (unfrozen_parameters) at each use. Copies that a
    layer's backward needs stay alive until it runs (without any recomputation). A head weight
    that is not in the compute dtype is cast again for every loss chunk (a * V * h).
loss logits
    tuner's CausalLMLoss runs the head + cross-entropy on chunks of c = min(K, chunk) positions,
    recomputed in backward, where `chunk` (tuner.train.loss.chunk_positions, the same function
    the loss uses) is the most positions whose backward fits 256 MiB: 455 for a 49,152-token
    vocabulary. Forward holds the fp32 logits and their log-softmax
    (8 B per logit); backward the saved log-softmax, the NLL gradient and the log-softmax
    gradient: 12 * V * c bytes (+ 8 with Gemma's soft-cap). Models outside `PLAIN_HEAD` run
    the full logits: the log-softmax of all T positions stays saved (4 * V * T) and backward
    needs (12 + a) * V * T.
the peak
    A step's memory rises and falls; the plan takes the largest of these points, each on top of
    the weights and the optimizer state (allocated by the first step, present from then on):
      end of forward    activations + all weight copies + loss forward
      backward start    activations + copies still saved + the first chunk's loss backward
                        (usually the peak: every activation is still alive)
      layer recompute   what the layers keep + one layer's activations, copies and gradients
                        (gradient checkpointing and selective recomputation)
      end of backward   gradients (+ the dense embedding gradient when embeddings are tied)
      optimizer step    gradients (+ unfused AdamW's sqrt(exp_avg_sq))
    With gradient accumulation the gradients stay alive through the later micro-batches.
    total = runtime + weights + optimizer state + step overhead + the largest point.
runtime and step overhead (the two fixed terms)
    runtime: 0.5 GiB for the process itself (Python, torch, transformers, peft, the tokenizer,
    the prepared data): SmolLM2 runs measure 0.45-0.5 GiB of RSS before the model loads; a
    CUDA context is of the same order. Measured inside a `tuner train` process
    (bench/memory_levers.py's probe, bench/_memprobe.py; SmolLM2 LoRA, fp32, 8 x 512 packed):
    419 MiB of RSS once torch, transformers, accelerate and datasets are imported (124 MiB of
    it the libraries' file-backed code), 576 MiB when setup is done (96 MiB more of it
    file-backed: pages of the memory-mapped weights, counted under weights, and of the
    prepared rows, and libraries imported later). Step overhead: 48 MiB that a first step adds besides its
    tensors (oneDNN kernel caches, the autograd graph's own objects, small blocks in malloc's
    arenas): SmolLM2 steps of 16 tokens, where every tensor term is small, measure 40-60 MiB
    of RSS above the tensors, for LoRA and full fine-tuning alike.

tests/e2e/test_memory_plan.py compares the plan with SmolLM2 runs (full fine-tuning, LoRA and
QLoRA, with and without gradient checkpointing): with the peak RSS above the loaded model, and
with the whole process's peak RSS (plan.total), each within 25%. Not modelled: sharding (FSDP
/ DeepSpeed divide weights, gradients and optimizer state over processes), torch.compile,
mixture-of-experts routing (experts count as dense layers), CUDA kernels' own choices (the
formulas follow torch's CPU kernels), and allocator overhead. On CPU the plan is what RSS
follows once glibc's mmap threshold is fixed (at 256 KiB: tuner.train.malloc, which tuner does
when memory is short, and TUNER_MALLOC=on always): freed activation blocks go back to the
system; at the peak of the LoRA step above (a 1 MiB threshold then, fp32), glibc's heap held 19 MiB of free chunks next to
3,264 MiB of tensors in their own mappings, and this plan's total (4.36 GiB) was 1.01x the
whole process's peak RSS (4,406 MiB). With glibc's default (a threshold that grows to 32 MiB),
tuner's default while memory is plentiful, freed blocks stay in the heap and are reused: the
same step retained 3,432 MiB of free heap at its peak (7,589 MiB in all), and ran 1.7x faster.
CUDA's caching allocator has its own fragmentation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from tuner.config.schema import TunerConfig
from tuner.errors import UserError
from tuner.plan.facts import (
    GiB,
    MiB,
    LayerInfo,
    LinearInfo,
    ModelFacts,
    ParamFacts,
    count_parameters,
    describe_model,
    dtype_bytes,
    fmt_bytes,
)

RUNTIME_BYTES = GiB // 2
STEP_OVERHEAD_BYTES = 48 * MiB


@dataclass
class Regime:
    """The dtypes one training step runs in (see the module docstring)."""

    precision: str  # bf16 | fp16 | no
    a: int  # compute dtype bytes
    autocast: bool
    residual: int  # bytes of the residual stream
    out: int  # bytes of a linear layer's output
    final: int  # bytes of the final norm's output (the gathered hidden states)
    full: bool  # full fine-tuning (fp32 master weights)
    kbit: bool  # QLoRA / 8-bit base


def regime(cfg: TunerConfig, precision: str) -> Regime:
    a = dtype_bytes(precision)
    autocast = precision != "no"
    kbit = cfg.adapter.load_in_4bit or cfg.adapter.load_in_8bit
    full = cfg.adapter.adapter is None
    if full or kbit:
        residual = final = 4  # fp32 master weights; k-bit: peft casts embeddings and norms to fp32
    else:
        residual = final = a  # LoRA: the base is held in the compute dtype
    out = 4 if (kbit or not autocast) else a
    return Regime(precision, a, autocast, residual, out, final, full, kbit)


def layer_bytes_per_token(layer: LayerInfo, p: ParamFacts, r: Regime, seq: int, attn: str) -> int:
    """Bytes one decoder layer saves for backward, per token (see the module docstring).

    Walks the layer in order: norm, q/k/v, attention, o, norm, gate/up, MLP, down. What an
    operation keeps for its *input's* gradient is saved only once a gradient can flow there
    (from below, or from a trainable weight earlier in the layer); what it keeps for its own
    weight's gradient is saved whenever that weight trains.
    """
    if not layer.active:
        return 0
    a, h, i = r.a, p.hidden, p.intermediate
    alive = layer.flows_in
    norms = iter(layer.norms)
    by_role = {role: [lin for lin in layer.linears if lin.role == role]
               for role in ("attn_in", "attn_out", "mlp_in", "mlp_out")}
    total = 0

    def norm() -> None:
        nonlocal total, alive
        trains = next(norms, False)
        total += (4 * h + 4 if alive else 0) + (4 * h if trains else 0)
        alive = alive or trains

    def inputs(role: str) -> None:
        nonlocal total, alive
        members = [lin for lin in by_role[role] if lin.saves_input]
        if members:
            total += sum(a * lin.in_features for lin in members) if r.autocast else 4 * members[0].in_features
        lora(by_role[role])
        alive = alive or bool(members)

    def lora(linears: list[LinearInfo]) -> None:
        nonlocal total
        for lin in linears:
            if lin.lora_r:
                total += (a if r.autocast else 4) * lin.lora_r  # lora_B's input
                if lin.lora_dropout > 0 and alive:
                    total += 4 * lin.in_features  # the dropout mask (kept only for the input's gradient)
                if lin.dora:
                    total += 2 * r.out * lin.out_features

    norm()
    inputs("attn_in")
    if alive:
        q = a * p.heads * p.head_dim
        if attn == "eager":
            total += 3 * q + (4 + a) * p.heads * seq
        else:
            # tuner's batches always carry a mask under sdpa (padding, or packed position_ids): transformers
            # then repeats k and v to every head, and the kernel builds an additive mask of the row's length
            kv_heads = p.heads if attn == "sdpa" else p.kv_heads
            total += 2 * q + 2 * a * kv_heads * p.head_dim + 4 * p.heads + (a * seq if attn == "sdpa" else 0)
    for lin in by_role["attn_out"]:
        if lin.saves_input and (attn == "eager" or (r.autocast and lin.lora_r) or not alive):
            total += a * lin.in_features  # a copy of the attention output (else shared with sdpa's)
    lora(by_role["attn_out"])
    alive = alive or any(lin.saves_input for lin in by_role["attn_out"])
    norm()
    inputs("mlp_in")
    if alive:
        total += (3 if p.gated_mlp else 1) * r.out * i
    for lin in by_role["mlp_out"]:
        if lin.saves_input:
            total += (a if r.autocast else 4) * lin.in_features  # the gated product (or a cast copy of it)
    lora(by_role["mlp_out"])
    for _ in norms:  # extra norms (Gemma 2: pre/post feed-forward norms)
        norm()
    return total


def layer_kept_bytes(layer: LayerInfo, p: ParamFacts, r: Regime, seq: int, attn: str) -> int:
    """Bytes per token one decoder layer keeps for backward under selective recomputation
    (tuner.train.loss.selective_recompute): its input, the output of every matrix multiply the
    policy keeps (the projections; LoRA's A, r wide; LoRA's B only when r > hidden / 8) and of
    the attention kernel (sdpa: the output and 4 B per head of log-sum-exp; eager: both batched
    matmuls, the scores a * H * S). Everything else is recomputed in backward."""
    from tuner.train.loss import LOW_RANK

    if not layer.active:
        return 0
    a, h = r.a, p.hidden
    total = r.residual * h
    for lin in layer.linears:
        total += r.out * lin.out_features
        if lin.lora_r:
            total += a * lin.lora_r
            if lin.lora_r * LOW_RANK > h:
                total += a * lin.out_features
    if attn == "eager":
        total += a * p.heads * seq + a * p.heads * p.head_dim
    else:
        total += a * p.heads * p.head_dim + 4 * p.heads
    return total


def layer_copy_bytes(layer: LayerInfo, r: Regime) -> tuple[int, int]:
    """(cached, saved) bytes of autocast's compute-dtype copies of one layer's fp32 matrices.

    Trainable fp32 matrices are cast once and cached for the whole forward (and saved for
    backward); frozen fp32 matrices (full fine-tuning with unfrozen_parameters) are cast at
    each use and saved only where a gradient flows through them.
    """
    if not (r.autocast and r.a < 4) or not layer.active:
        return 0, 0
    cached = saved = 0
    for lin in layer.linears:
        weight = lin.in_features * lin.out_features
        if r.full and lin.weight_trains:
            cached += r.a * weight
        elif r.full and layer.flows_in:
            saved += r.a * weight
        if lin.lora_r:
            cached += r.a * lin.lora_r * (lin.in_features + lin.out_features)
    return cached, saved


@dataclass
class PlanLine:
    name: str
    bytes: int
    note: str


@dataclass
class MemoryPlan:
    precision: str
    tokens: int  # token slots of one micro-batch
    head_positions: int  # positions reaching the head in one micro-batch (worst case)
    chunk: int
    weights: int
    gradients: int
    optimizer: int
    activations: int
    weight_copies: int
    loss: int
    runtime: int
    phases: dict[str, int]  # candidate peaks above weights + optimizer state
    peak_phase: str
    total: int
    lines: list[PlanLine]
    layer_saved: list[int]  # bytes per decoder layer (no checkpointing), for the tests
    layer_copies: list[int]  # autocast weight copies per decoder layer (no checkpointing)
    outside_saved: int  # saved outside the layers (final norm, gathered hidden states, ...)
    notes: list[str] = field(default_factory=list)
    selective: bool = False  # selective recomputation (tuner.train.loss.selective_recompute)
    layer_kept: list[int] = field(default_factory=list)  # bytes per decoder layer kept under it

    @property
    def step(self) -> int:
        """What one step adds to a process that holds the loaded model: total - runtime - weights."""
        return self.total - self.runtime - self.weights


def weight_bytes(cfg: TunerConfig, p: ParamFacts, r: Regime) -> tuple[int, str]:
    a = cfg.adapter
    adapter = 4 * p.adapter_params
    base = p.base_total
    if r.full:
        return 4 * p.total, "fp32 master weights (4 B/param); autocast computes in " + (
            "bf16" if r.precision == "bf16" else "fp16" if r.precision == "fp16" else "fp32")
    if a.load_in_4bit:
        quant = p.linear_weights
        scales = quant / 64 + quant / (64 * 256) * 4 if a.bnb_4bit_use_double_quant else quant / 64 * 4
        other = base - quant
        total = int(quant / 2 + scales) + 4 * other + adapter + r.a * p.saved_modules_params
        return total, (f"{quant:,} linear weights in 4 bit ({a.bnb_4bit_quant_type}, {quant / 2 / MiB:,.1f} MiB + "
                       f"{scales / MiB:,.1f} MiB scales), {other:,} others fp32, adapter fp32")
    if a.load_in_8bit:
        quant = p.linear_weights
        other = base - quant
        total = quant + 4 * p.linear_rows + 4 * other + adapter + r.a * p.saved_modules_params
        return total, f"{quant:,} linear weights in int8 (+ fp32 row scales), {other:,} others fp32, adapter fp32"
    name = {2: "bf16" if r.precision == "bf16" else "fp16", 4: "fp32"}[r.a]
    return r.a * base + adapter + r.a * p.saved_modules_params, f"base in {name} ({r.a} B/param), adapter fp32"


def plan_memory(cfg: TunerConfig, p: ParamFacts, precision: str, sequence_len: int | None = None,
                logit_positions: int | None = None, extra_forward: int = 0, mapped_source: int = 0) -> MemoryPlan:
    """The plan of one optimizer step. rl: grpo (grpo_plan) passes its training rows' length
    (`sequence_len`: prompt + completion), the positions whose full logits its loss computes
    (`logit_positions`) and what its reference forward adds at the end of the forward;
    `mapped_source` (`mapped_source_bytes`): checkpoint pages a k-bit load leaves mapped."""
    from tuner.train.loss import PLAIN_HEAD, uses_selective_recompute

    t, d = cfg.training, cfg.data
    r = regime(cfg, precision)
    a = r.a
    B, S = t.micro_batch_size, sequence_len or d.sequence_len
    T = B * S
    K = B * (S - 1)
    h, V = p.hidden, p.vocab
    attn = cfg.model.attn_implementation
    gc = t.gradient_checkpointing
    selective = uses_selective_recompute(cfg)
    model_type = p.model_type

    weights, weights_note = weight_bytes(cfg, p, r)
    if mapped_source:
        weights += mapped_source
        weights_note += (f"; + {fmt_bytes(mapped_source)} of the checkpoint's pages of the quantized weights, which "
                         "stay mapped while the unquantized tensors view the file")
    grads = 4 * p.trainable
    optimizer = 8 * p.trainable

    # attention spans a row: sequence_len, or the whole micro-batch when it is flattened into one row
    span = T if d.batch_flattening else S
    layer_saved = [layer_bytes_per_token(layer, p, r, span, attn) * T for layer in p.layers]
    rope = 2 * T * p.head_dim * r.residual
    final_norm = 4 * h + 4 + (4 * h if r.full else 0)
    plain_head = (model_type is None or model_type in PLAIN_HEAD) and logit_positions is None
    outside = T * (final_norm + 8 + 1) + rope + B * S * S
    if plain_head:
        outside += K * (h * r.final + 8)
    layer_kept = [layer_kept_bytes(layer, p, r, span, attn) * T for layer in p.layers] if selective else []
    if gc:
        activations = sum(T * h * r.residual for layer in p.layers if layer.active) + outside
    elif selective:
        activations = sum(layer_kept) + outside
    else:
        activations = sum(layer_saved) + outside + a * p.dora_extra  # DoRA: eye(in) and lora_A(eye) per linear

    # autocast copies of fp32 weights: cached for the forward, kept while saved
    layer_copies = [layer_copy_bytes(layer, r) for layer in p.layers]
    cached = sum(c for c, _ in layer_copies)
    copies = cached + sum(s for _, s in layer_copies)
    head_weight_bytes = 4 if (r.full or r.kbit) else a
    head_copy = a * p.head_params if (r.autocast and head_weight_bytes != a) else 0

    loss = loss_terms(p, r, logit_positions or T, K, plain_head)
    chunk, chunks, loss_fwd, loss_bwd, loss_saved = loss.chunk, loss.chunks, loss.forward, loss.backward, loss.saved
    head_grad = 4 * p.head_params if p.head_trains else 0
    accumulated = grads if t.gradient_accumulation_steps > 1 else 0
    in_flight = accumulated or (head_grad if chunks > 1 else 0)

    recomputes = gc or selective  # a layer's saved tensors and weight copies exist one layer at a time
    phases = {
        "end of forward": (activations + loss_saved + (cached if recomputes else copies) + head_copy + loss_fwd
                           + accumulated + extra_forward),
        "backward start": activations + (0 if recomputes else copies) + head_copy + loss_bwd + in_flight,
        "end of backward": grads + (4 * V * h if (p.tied and p.embed_trains) else 0),
        "optimizer step": grads + optimizer_temporaries(t.optimizer, p),
    }
    if recomputes:
        layer = max(layer_saved, default=0)
        per_layer_copies = max((c + s for c, s in layer_copies), default=0)
        transient = T * (2 * h * r.residual + 4 * r.out * p.intermediate)
        phases["layer recompute"] = activations + layer + per_layer_copies + transient + (accumulated or head_grad)
    if r.kbit:
        dequant = a * p.largest_linear  # bitsandbytes dequantizes one weight at a time
        for key in ("end of forward", "backward start"):
            phases[key] += dequant
    peak_phase = max(phases, key=phases.get)
    total = RUNTIME_BYTES + weights + optimizer + phases[peak_phase] + STEP_OVERHEAD_BYTES

    plan = MemoryPlan(
        precision=precision, tokens=T, head_positions=K, chunk=chunk, weights=weights, gradients=grads,
        optimizer=optimizer, activations=activations, weight_copies=copies + head_copy, loss=loss_bwd,
        runtime=RUNTIME_BYTES, phases=phases, peak_phase=peak_phase, total=total, lines=[],
        layer_saved=layer_saved, layer_copies=[c + s for c, s in layer_copies], outside_saved=outside,
        selective=selective, layer_kept=layer_kept,
    )
    plan.lines, plan.notes = describe(plan, cfg, p, r, weights_note, loss)
    return plan


@dataclass
class LossTerms:
    chunk: int  # positions per head + cross-entropy chunk
    chunks: int
    forward: int  # bytes while a chunk's forward runs
    backward: int  # bytes while a chunk's backward runs
    saved: int  # kept from forward to backward (full logits only)
    plain_head: bool
    softcap: int  # extra bytes per logit for Gemma's soft-cap


def loss_terms(p: ParamFacts, r: Regime, T: int, K: int, plain_head: bool) -> LossTerms:
    """The head + cross-entropy: tuner's gathered, chunked loss, or the model's full logits."""
    from tuner.train.loss import chunk_positions

    V, a = p.vocab, r.a
    softcap = 8 if p.softcap else 0
    if p.score_params:  # a sequence classifier: its head reads one position per sequence, no vocabulary logits
        return LossTerms(0, 0, 0, 0, 0, True, 0)
    if plain_head:
        chunk = min(K, chunk_positions(V, bool(p.softcap)))
        return LossTerms(chunk, math.ceil(K / chunk), (8 + softcap) * V * chunk, (12 + softcap) * V * chunk, 0,
                         True, softcap)
    return LossTerms(T, 1, (8 + a) * V * T, 12 * V * T + a * V * T, 4 * V * T, False, softcap)


def describe(plan: MemoryPlan, cfg: TunerConfig, p: ParamFacts, r: Regime, weights_note: str,
             loss: LossTerms) -> tuple[list[PlanLine], list[str]]:
    """The plan's lines as `tuner info` prints them, and its notes."""
    t = cfg.training
    T, V, h, a = plan.tokens, p.vocab, p.hidden, r.a
    gc = t.gradient_checkpointing
    layer_saved, outside, activations = plan.layer_saved, plan.outside_saved, plan.activations
    copies, peak_phase, phases = plan.weight_copies, plan.peak_phase, plan.phases
    grads, optimizer, total = plan.gradients, plan.optimizer, plan.total
    chunk, chunks, softcap, loss_bwd = loss.chunk, loss.chunks, loss.softcap, loss.backward
    lines = [
        PlanLine("runtime", RUNTIME_BYTES, "Python, torch, tokenizer, data (fixed)"),
        PlanLine("weights", plan.weights, weights_note),
        PlanLine("gradients", grads, f"fp32, {p.trainable:,} trainable parameters"),
        PlanLine("optimizer state", optimizer, f"AdamW ({t.optimizer}): exp_avg + exp_avg_sq, fp32"),
    ]
    per_token = max(layer_saved, default=0) // T if T else 0
    if plan.selective:
        kept = max(plan.layer_kept, default=0) // T if T else 0
        act_note = (f"selective recomputation: {sum(1 for x in p.layers if x.active)} layers x {kept:,} B/token "
                    f"(input, matmul and attention outputs) x {T:,} tokens + {fmt_bytes(outside)} outside; "
                    f"the rest ({per_token:,} B/token without it) recomputed one layer at a time")
    elif gc:
        act_note = (f"gradient checkpointing: {sum(1 for x in p.layers if x.active)} layer inputs x {h} x "
                    f"{r.residual} B x {T:,} tokens; one layer ({fmt_bytes(max(layer_saved, default=0))}) recomputed at a time")
    else:
        act_note = (f"{sum(1 for x in p.layers if x.active)} layers x {per_token:,} B/token x {T:,} tokens "
                    f"+ {fmt_bytes(outside)} outside the layers")
    lines.append(PlanLine("activations", activations, act_note))
    if copies:
        lines.append(PlanLine("weight copies", copies,
                              f"autocast's {'bf16' if a == 2 else 'compute-dtype'} copies of fp32 weights"
                              + (" (dropped after forward: recomputed)" if (gc or plan.selective) and copies else "")))
    if p.score_params:
        loss_note = "none: the classification head reads one position per sequence (no vocabulary logits)"
    elif loss.plain_head:
        loss_note = (f"head + cross-entropy on {chunks} chunk(s) of {chunk:,} positions x {V:,} vocabulary, "
                     f"recomputed in backward: {12 + softcap} B per logit")
    else:
        loss_note = f"full logits ({p.model_type} is not in tuner's gathered-head list): {V:,} x {T:,} positions"
    lines.append(PlanLine("loss logits", loss_bwd, loss_note))
    lines.append(PlanLine("step overhead", STEP_OVERHEAD_BYTES,
                          "kernel caches, autograd bookkeeping, small allocations (fixed)"))
    others = "; ".join(f"{k} {fmt_bytes(v)}" for k, v in phases.items() if k != peak_phase)
    lines.append(PlanLine(
        "total", total,
        f"runtime + weights + optimizer state + step overhead + the largest point of the step: {peak_phase} "
        f"{fmt_bytes(phases[peak_phase])} (others: {others})",
    ))
    notes = []
    if t.gradient_accumulation_steps > 1:
        notes.append(f"gradient accumulation ({t.gradient_accumulation_steps}): gradients stay alive through the micro-batches")
    if t.fsdp or t.deepspeed is not None:
        notes.append("FSDP / DeepSpeed shard weights, gradients and optimizer state over processes: not modelled (one process, unsharded)")
    if t.torch_compile:
        notes.append("torch_compile: not modelled (on CPU a compiled step used ~0.7x the eager step memory)")
    return lines, notes


@dataclass
class GRPOPlan:
    """rl: grpo's step on one process: the rollout generates every completion of the step at once
    (KV cache), then the training micro-batches run on completions of max length."""

    prompts: int  # per optimizer step, per process
    generations: int
    completions: int
    max_completion_length: int
    prompt_len: int  # the longest prompt (sequence_len: longer ones are dropped or cut)
    kv_cache: int
    reference: str
    reference_bytes: int  # weights the reference adds
    reward_models: str  # what they are ("" without any)
    reward_model_bytes: int  # their weights, loaded for the whole run
    train: MemoryPlan  # a training micro-batch of completions of max length
    generation_total: int  # runtime + weights + optimizer state + reference + reward models + KV cache + overhead
    total: int  # the larger of the two (the KV cache is freed before the training forward)

    @property
    def train_total(self) -> int:
        return self.train.total + self.reference_bytes + self.reward_model_bytes


def reward_model_weights(cfg: TunerConfig, a: int) -> tuple[int, str]:
    """(bytes, what) of the reward models among the rewards (trl.reward_funcs folders,
    reward_model_path): `a` B per parameter of their safetensors headers, as they load in the
    compute dtype (an adapter folder: its base's, the adapter merged into it)."""
    import json
    from pathlib import Path

    from tuner.config.schema import is_model_path
    from tuner.plan.facts import read_stored_weights
    from tuner.train.rewards import find_folder

    trl = cfg.preference.trl
    assert trl is not None
    entries = [e for e in trl.reward_funcs or [] if is_model_path(e)] + [e for e in [trl.reward_model_path] if e]
    search = ([Path(cfg.config_dir)] if cfg.config_dir else []) + [Path.cwd()]
    total, parts = 0, []
    for entry in entries:
        try:
            folder = find_folder(entry, "trl", search)
        except UserError:
            parts.append(f"{entry}: not found (train stops on it)")
            continue
        source = folder
        if (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
            source = Path(json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path", ""))
        params = read_stored_weights(source).parameters if source.is_dir() else 0
        total += a * params
        parts.append(f"{folder.name} {params:,} parameters" if params else f"{folder.name}: no safetensors to read")
    return total, "; ".join(parts)


def grpo_plan(cfg: TunerConfig, p: ParamFacts, precision: str) -> GRPOPlan:
    """The GRPO step's memory: generation's KV cache, n_layers x 2 (k, v) x kv_heads x head_dim x
    (prompt + max_completion_length) x completions x a, with the policy in the compute dtype;
    and the training forward over micro-batches of micro_batch_size completions of prompt +
    max_completion_length tokens, whose loss takes the full logits of the last
    max_completion_length + 1 positions (tuner.train.objectives.grpo.completion_logps). beta > 0
    adds the reference: the base with the adapter disabled (no weights; its no-grad forward's
    logits at the end of the forward), a second adapter (lora_model_dir), or, for a full
    fine-tune, a frozen fp32 copy of the model. Reward models stay loaded all run (their
    scoring forward, one batch of the step's completions without grad, is not counted)."""
    t, a = cfg.training, cfg.adapter
    trl = cfg.preference.trl
    assert trl is not None
    r = regime(cfg, precision)
    G, C = trl.num_generations or 8, trl.max_completion_length or 512
    completions = t.micro_batch_size * t.gradient_accumulation_steps
    P = cfg.data.sequence_len
    kv = len(p.layers) * 2 * p.kv_heads * p.head_dim * (P + C) * completions * r.a
    positions = t.micro_batch_size * (C + 1)
    beta = cfg.preference.beta
    if not beta:
        reference, ref_bytes, ref_forward = "none (beta 0: no KL term, no reference forward)", 0, 0
    else:
        ref_forward = (r.a + 8) * p.vocab * positions  # its logits, their fp32 copy and log-softmax (no grad)
        if not a.adapter:
            reference, ref_bytes = "a frozen copy of the model (full fine-tuning): its fp32 weights", 4 * p.total
        elif a.lora_model_dir:
            reference, ref_bytes = "lora_model_dir's adapter, loaded a second time (frozen)", 4 * p.adapter_params
        else:
            reference, ref_bytes = "the base with the adapter disabled: no extra weights", 0
        reference += f"; its no-grad forward per micro-batch holds {fmt_bytes(ref_forward)} of logits"
    rewards, reward_note = reward_model_weights(cfg, r.a)
    train = plan_memory(cfg, p, precision, sequence_len=P + C, logit_positions=positions, extra_forward=ref_forward)
    generation = RUNTIME_BYTES + train.weights + train.optimizer + ref_bytes + rewards + kv + STEP_OVERHEAD_BYTES
    return GRPOPlan(completions // G, G, completions, C, P, kv, reference, ref_bytes, reward_note, rewards, train,
                    generation, max(generation, train.total + ref_bytes + rewards))


def optimizer_temporaries(name: str, p: ParamFacts) -> int:
    """Fused AdamW updates in place. The unfused one computes sqrt(exp_avg_sq) as a new tensor:
    one parameter at a time on CPU, for all of them at once (foreach) on CUDA."""
    if name == "adamw_torch_fused":
        return 0
    import torch

    return 4 * (p.trainable if torch.cuda.is_available() else p.largest_trainable)


def resolve_precision(cfg: TunerConfig) -> tuple[str, str | None]:
    """(precision, note): as the training loop resolves it on this machine."""
    from tuner.train.precision import mixed_precision

    try:
        return mixed_precision(cfg.training), None
    except UserError as err:
        t = cfg.training
        wanted = "fp16" if t.fp16 is True else "bf16"
        return wanted, f"planned for {wanted} as configured, but training on this machine would stop: {err}"


def mapped_source_bytes(cfg: TunerConfig, facts: ModelFacts, p: ParamFacts) -> int:
    """A QLoRA / 8-bit load on CPU from a float checkpoint in the dtype it is loaded in (the
    compute dtype: fp32 without mixed precision): transformers memory-maps the safetensors file
    and bitsandbytes reads every linear weight from it to quantize it, while the weights it
    leaves unquantized (embeddings, norms) stay views of the mapping; so the file stays mapped
    and the pages of the quantized weights stay resident (RSS), at their stored size. Measured
    after loading SmolLM2-135M (fp32 file) in 4 bit, fp32: 502 MiB of file-backed RSS, 94 MiB of
    anonymous memory for the quantized model. Loaded in another dtype (bf16 from that fp32 file)
    every tensor is a cast copy and the mapping goes: measured on the same load, RSS after
    loading 708 MiB in bf16 against 1,019 in fp32, and 418 MiB less once the weights are paged
    in (2026-12-02, tests/e2e/test_memory_plan.py's probe). On CUDA the weights live on the
    device (0 here)."""
    import torch

    a = cfg.adapter
    stored = facts.stored
    if not (a.load_in_4bit or a.load_in_8bit) or torch.cuda.is_available() or stored is None or not stored.files:
        return 0
    loaded = {"bf16": "bfloat16", "fp16": "float16"}.get(resolve_precision(cfg)[0], "float32")
    if stored.main_dtype != loaded:  # cast copies: nothing keeps the file mapped
        return 0
    size = {"float32": 4, "bfloat16": 2, "float16": 2}.get(stored.main_dtype or "")
    return p.linear_weights * size if size else 0  # a checkpoint stored quantized: not read at full size


def memory_plan(cfg: TunerConfig, facts: ModelFacts | None = None, params: ParamFacts | None = None) -> MemoryPlan:
    """The memory plan of `cfg` (describes the model and counts parameters when not given)."""
    facts = facts or describe_model(cfg)
    params = params or count_parameters(cfg, facts)
    return plan_memory(cfg, params, resolve_precision(cfg)[0], mapped_source=mapped_source_bytes(cfg, facts, params))
