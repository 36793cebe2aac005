"""Command line: argument parsing and dispatch only.

Every command takes a config file and optional overrides (`--learning_rate 1e-4`).
torch and transformers are imported inside the commands that need them, so `--help`
and `validate` stay light.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from tuner import __version__
from tuner.errors import UserError

log = logging.getLogger("tuner")

EPILOG = """\
Any config key can be overridden after the config path, e.g.
  tuner train config.yml --learning_rate 1e-4 --max_steps 20 --datasets.0.path data.jsonl
"""


def _config(args: argparse.Namespace, overrides: list[str]):
    """The validated config (class names checked too); its notices are printed once, by the
    main process, before the command runs."""
    from tuner.config import load_config
    from tuner.models.resolve import class_name_problems

    def class_names(data: dict):
        return class_name_problems(data.get("model_type"), data.get("tokenizer_type"))

    cfg = load_config(args.config, overrides, checks=[class_names])
    if os.environ.get("RANK", "0") == "0":
        for notice in cfg.notices:
            log.warning("%s: %s", args.config, notice)
    return cfg


def cmd_validate(args: argparse.Namespace, overrides: list[str]) -> int:
    from tuner.config import dump_config

    cfg = _config(args, overrides)
    print(dump_config(cfg), end="")
    print(f"# {args.config}: valid", file=sys.stderr)
    return 0


def _quiet_libraries() -> None:
    """Only tuner's progress bar: silence transformers' per-load bars and info chatter."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _prepare(cfg, read_config: bool = True):
    """(prepared data, tokenizer) for a config: the data stage, without model weights."""
    from tuner.data.pipeline import prepare
    from tuner.models.inputs import load_inputs

    inputs = load_inputs(cfg, read_config=read_config)
    return prepare(cfg, inputs.tokenizer, inputs.tokenizer_files), inputs.tokenizer


def cmd_preprocess(args: argparse.Namespace, overrides: list[str]) -> int:
    cfg = _config(args, overrides)
    _quiet_libraries()
    print(_prepare(cfg, read_config=False)[0].summary())
    return 0


def cmd_inspect(args: argparse.Namespace, overrides: list[str]) -> int:
    cfg = _config(args, overrides)
    _quiet_libraries()
    from tuner.data.inspect import report, stream_report, use_colour

    if cfg.data.pretraining_dataset:  # a streamed corpus: its first packed rows
        from tuner.models.inputs import load_inputs

        print(stream_report(cfg, load_inputs(cfg).tokenizer, args.rows, use_colour()))
        return 0
    prepared, tokenizer = _prepare(cfg)
    t = cfg.training
    print(report(prepared, tokenizer, cfg.data.sequence_len, t.micro_batch_size, t.seed, args.rows, use_colour(),
                 packing=cfg.data.sample_packing))
    return 0


def cmd_merge_lora(args: argparse.Namespace, overrides: list[str]) -> int:
    from pathlib import Path

    cfg = _config(args, overrides)
    _quiet_libraries()
    from tuner.export.merge import merge

    adapter_dir = Path(args.lora_model_dir or cfg.adapter.lora_model_dir or cfg.training.output_dir)
    output = Path(args.output) if args.output else adapter_dir / "merged"
    print(f"merged model saved to {merge(adapter_dir, output, args.dtype)}")
    return 0


def cmd_export_gguf(args: argparse.Namespace, overrides: list[str]) -> int:
    from pathlib import Path

    cfg = _config(args, overrides)
    _quiet_libraries()
    from tuner.export.gguf import check_quant, export_trained, llama_cpp_command

    quant = check_quant(args.quant)
    model_dir = Path(args.model_dir or cfg.training.output_dir)
    # Not beside adapter_config.json: transformers would load the adapter's base instead of the file.
    output = Path(args.output) if args.output else model_dir / "gguf" / f"model-{quant}.gguf"
    result = export_trained(cfg, model_dir, output, quant)
    print(f"GGUF saved to {result.path} ({result.arch}, {quant}, {result.tensors} tensors, {result.bytes / 2**20:.0f} MiB)")
    for note in result.notes:
        print(f"  {note}")
    print(f"run it with llama.cpp:  {llama_cpp_command(result.path)}")
    return 0


def _sampling(args: argparse.Namespace):
    from tuner.infer.generate import Sampling

    if args.max_new_tokens < 1 or args.temperature < 0 or not 0 < args.top_p <= 1:
        raise UserError("--max-new-tokens must be >= 1, --temperature >= 0, --top-p in (0, 1]")
    return Sampling(args.max_new_tokens, args.temperature, args.top_p)


def cmd_generate(args: argparse.Namespace, overrides: list[str]) -> int:
    from pathlib import Path

    cfg = _config(args, overrides)
    _quiet_libraries()
    if args.prompt is not None:
        prompt = args.prompt
    elif args.prompt_file:
        try:
            prompt = Path(args.prompt_file).read_text(encoding="utf-8")
        except OSError as err:
            raise UserError(f"--prompt-file: cannot read {args.prompt_file}: {err.strerror}") from None
    else:
        prompt = sys.stdin.read()
    if not prompt.strip():
        raise UserError("no prompt: give --prompt TEXT, --prompt-file FILE, or text on stdin")
    from tuner.infer.generate import generate
    from tuner.models.inputs import load_inputs

    load_inputs(cfg)  # the config's base and tokenizer checks, as train made them
    model_dir = Path(args.model_dir) if args.model_dir else None
    print(generate(cfg, prompt, _sampling(args), model_dir, args.chat_template, args.input or ""))
    return 0


def cmd_chat(args: argparse.Namespace, overrides: list[str]) -> int:
    from pathlib import Path

    cfg = _config(args, overrides)
    _quiet_libraries()
    from tuner.infer.generate import chat
    from tuner.models.inputs import load_inputs

    load_inputs(cfg)  # the config's base and tokenizer checks, as train made them
    chat(cfg, _sampling(args), Path(args.model_dir) if args.model_dir else None)
    return 0


def cmd_score(args: argparse.Namespace, overrides: list[str]) -> int:
    from pathlib import Path

    cfg = _config(args, overrides)
    _quiet_libraries()
    from tuner.infer.score import score
    from tuner.models.inputs import load_inputs

    load_inputs(cfg)  # the config's base and tokenizer checks, as train made them
    print("\n".join(score(cfg, Path(args.input), Path(args.model_dir) if args.model_dir else None)))
    return 0


def cmd_info(args: argparse.Namespace, overrides: list[str]) -> int:
    cfg = _config(args, overrides)
    _quiet_libraries()
    from tuner.plan import info_report

    print(info_report(cfg, device_memory=args.device_memory))
    return 0


def cmd_report(args: argparse.Namespace, overrides: list[str]) -> int:
    from pathlib import Path

    from tuner.train.report import describe, write_report

    out = Path(args.output_dir)
    summary = write_report(out)
    print(describe(summary))
    print(f"report: {out / 'report.png'}, summary: {out / 'summary.json'}")
    return 0


def cmd_config_schema(args: argparse.Namespace, overrides: list[str]) -> int:
    from tuner.config.reference import markdown, schema_json

    if overrides:
        raise UserError(f"config-schema takes no config keys, got {' '.join(overrides)}")
    print(markdown() if args.format == "markdown" else schema_json(), end="" if args.format == "markdown" else "\n")
    return 0


def cmd_train(args: argparse.Namespace, overrides: list[str]) -> int:
    cfg = _config(args, overrides)  # checked before any process starts
    if args.num_processes and args.num_processes > 1 or args.nnodes > 1:
        from tuner.train.distributed import launch

        return launch(args.config, overrides, args.num_processes or 1, args.nnodes, args.node_rank,
                      args.master_addr, args.master_port)
    _quiet_libraries()
    from tuner.train.loop import train

    train(cfg)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tuner",
        description="Fine-tune causal language models from one YAML config.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tuner {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = {
        "validate": (cmd_validate, "check a config and print it with every default filled in"),
        "preprocess": (cmd_preprocess, "tokenize the datasets into the prepared-dataset cache"),
        "train": (cmd_train, "train (preparing the datasets first when needed)"),
        "inspect": (cmd_inspect, "show prepared rows token by token (trained ones marked) and dataset statistics"),
        "merge-lora": (cmd_merge_lora, "merge the trained adapter into the base weights (a standard HF folder)"),
        "export-gguf": (cmd_export_gguf, "write the trained model (adapter merged) as one GGUF file for llama.cpp"),
        "generate": (cmd_generate, "complete one prompt with the trained model"),
        "chat": (cmd_chat, "talk to the trained model, turn by turn (stdin)"),
        "score": (cmd_score, "rewards (reward_model) or class predictions (classification) for the rows of a JSONL file"),
        "info": (cmd_info, "what would train: classes, parameters, and a memory plan for one step (no weights loaded)"),
    }
    report = sub.add_parser("report", help="redraw OUTPUT_DIR/report.png and summary.json from metrics.jsonl")
    report.add_argument("output_dir", help="a training output folder (also while training runs)")
    report.set_defaults(func=cmd_report)
    schema = sub.add_parser("config-schema", help="print the config schema (docs/config.md is generated from it)")
    schema.add_argument("--format", choices=["json", "markdown"], default="json")
    schema.set_defaults(func=cmd_config_schema)
    for name, (func, help_text) in commands.items():
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("config", help="path to the YAML config")
        if name == "train":
            p.add_argument("--num-processes", type=int, default=None,
                           help="start N training processes on this machine (DDP; gloo on CPU)")
            p.add_argument("--nnodes", type=int, default=1, help="machines taking part (each runs this command)")
            p.add_argument("--node-rank", type=int, default=0, help="this machine's index, 0 to nnodes-1")
            p.add_argument("--master-addr", help="address of the node-rank 0 machine (multi-node)")
            p.add_argument("--master-port", type=int, help="its port (multi-node)")
        if name == "info":
            p.add_argument("--device-memory", help="check the plan against this much memory, e.g. 24GiB "
                           "(default: the detected GPU, or this machine's RAM)")
        if name == "inspect":
            p.add_argument("--rows", type=int, default=3, help="how many prepared rows to show (default 3)")
        if name == "merge-lora":
            p.add_argument("--lora-model-dir", help="the adapter folder (default: output_dir)")
            p.add_argument("--output", help="where to write the merged model (default: ADAPTER/merged)")
            p.add_argument("--dtype", help="float32 | bfloat16 | float16 (default: the base folder's)")
        if name == "export-gguf":
            p.add_argument("--model-dir", help="the trained adapter or full model (default: output_dir)")
            p.add_argument("--output", help="the .gguf file to write (default: MODEL_DIR/gguf/model-QUANT.gguf)")
            p.add_argument("--quant", default="f16", help="f16 (default) | bf16 | f32 | q8_0 | q5_1 | q5_0 | q4_1 | q4_0")
        if name == "score":
            p.add_argument("--input", required=True, help="a JSONL file of rows like the training data's (pairs, "
                           "conversations, or texts)")
            p.add_argument("--model-dir", help="the trained model or adapter (default: output_dir)")
        if name in ("generate", "chat"):
            p.add_argument("--model-dir", help="the trained model or adapter (default: output_dir)")
            p.add_argument("--max-new-tokens", type=int, default=128)
            p.add_argument("--temperature", type=float, default=0.0, help="0 (default) decodes greedily")
            p.add_argument("--top-p", type=float, default=1.0)
        if name == "generate":
            p.add_argument("--prompt", help="the prompt text (else --prompt-file, else stdin)")
            p.add_argument("--prompt-file")
            p.add_argument("--input", help="the input field of an instruction format (alpaca: `### Input:`)")
            p.add_argument("--chat-template", action="store_true", help="wrap the prompt in the chat template")
        p.set_defaults(func=func)
    return parser


def setup_logging() -> None:
    """tuner's own messages at INFO; other libraries only warn. No progress bars but tuner's."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[tuner] %(message)s"))
    log.addHandler(handler)
    log.setLevel(os.environ.get("TUNER_LOG_LEVEL", "INFO").upper())
    log.propagate = False
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # bitsandbytes warns at import that it cannot fetch an optional CPU kernel from the hub.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    # transformers' own deprecation notices, raised from inside peft/transformers, not user code.
    warnings.filterwarnings("ignore", message=".*is deprecated and will be removed in v6.*")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, overrides = parser.parse_known_args(argv)
    setup_logging()
    try:
        return args.func(args, overrides)
    except UserError as err:
        print(f"tuner: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("tuner: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
