"""`tuner generate` and `tuner chat`: load what training produced and talk to it.

The model is the trained adapter on its base (or a fully fine-tuned / merged model). The
prompt is built the way the model was trained: through the chat template for chat data
(the template saved with the tokenizer is the one that trained it), or the dataset type's
own prompt format (alpaca, user-defined) otherwise.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from tuner.config.schema import TunerConfig
from tuner.errors import UserError


@dataclass
class Sampling:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0

    def kwargs(self, tokenizer: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "pad_token_id": tokenizer.pad_token_id}
        if self.temperature > 0:
            out.update(do_sample=True, temperature=self.temperature, top_p=self.top_p)
        else:
            out.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return out


def load_trained(model_dir: Path, dtype: Any = None) -> tuple[Any, Any]:
    """(model, tokenizer) from a training output folder: an adapter (on its base) or a full model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = dtype or torch.float32
    if not model_dir.is_dir():
        raise UserError(f"{model_dir} does not exist: train first (tuner train) or pass --model-dir")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError) as err:
        raise UserError(f"{model_dir} holds no tokenizer: {err}") from None
    if (model_dir / "adapter_config.json").is_file():
        import json

        from tuner.models.adapter import peft_calls

        base_path = json.loads((model_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
        base = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype)
        if len(tokenizer) > base.get_input_embeddings().weight.shape[0]:
            base.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with peft_calls(quantized=False):  # a plain base
            from peft import PeftModel

            model = PeftModel.from_pretrained(base, str(model_dir))
    elif (model_dir / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    else:
        raise UserError(f"{model_dir} holds neither an adapter nor a model: train first (tuner train)")
    return model.eval(), tokenizer


def training_prompt(cfg: TunerConfig, text: str, input_text: str = "") -> str:
    """`text` as the instruction (and `input_text` as the input), in the prompt format of the
    first dataset's type (the text as written for types without a prompt template)."""
    from tuner.data.formats import get_format

    ds = cfg.data.datasets[0]
    return get_format(ds).prompt(text, input_text, ds)


def chat_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    if not tokenizer.chat_template:
        raise UserError("the trained tokenizer has no chat template; use a prompt in the training format instead")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def complete(model: Any, tokenizer: Any, prompt: str, sampling: Sampling, special_tokens: bool) -> str:
    """The generated continuation of `prompt`. `special_tokens`: add the tokenizer's BOS (as
    training did for a prompt format; a rendered chat template carries its own)."""
    import torch

    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=special_tokens)
    with torch.no_grad():
        out = model.generate(**enc, **sampling.kwargs(tokenizer))
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def generate(cfg: TunerConfig, prompt: str, sampling: Sampling, model_dir: Path | None, chat_template: bool,
             input_text: str = "") -> str:
    """Complete `prompt` (the instruction; `input_text` fills an instruction format's input field)."""
    from tuner.data.templates import uses_chat

    chat = chat_template or uses_chat(cfg.data)
    if input_text and chat:
        raise UserError("--input is for instruction formats (alpaca, user-defined); with a chat template "
                        "put everything in the prompt")
    text = None if chat else training_prompt(cfg, prompt, input_text)  # format errors before loading
    model, tokenizer = load_trained(model_dir or Path(cfg.training.output_dir))
    if chat:
        return complete(model, tokenizer, chat_prompt(tokenizer, [{"role": "user", "content": prompt}]), sampling, False)
    return complete(model, tokenizer, text, sampling, True)


def chat(cfg: TunerConfig, sampling: Sampling, model_dir: Path | None, stdin: TextIO = sys.stdin,
         stdout: TextIO = sys.stdout) -> None:
    """Multi-turn conversation on stdin/stdout; an empty line or EOF ends it, /reset starts over."""
    model, tokenizer = load_trained(model_dir or Path(cfg.training.output_dir))
    messages: list[dict[str, str]] = []
    interactive = stdin.isatty()
    while True:
        if interactive:
            stdout.write("you> ")
            stdout.flush()
        line = stdin.readline()
        if not line or not line.strip() or line.strip() in ("/exit", "/quit"):
            return
        if line.strip() == "/reset":
            messages = []
            continue
        messages.append({"role": "user", "content": line.rstrip("\n")})
        answer = complete(model, tokenizer, chat_prompt(tokenizer, messages), sampling, False).strip()
        messages.append({"role": "assistant", "content": answer})
        stdout.write(("model> " if interactive else "") + answer + "\n")
        stdout.flush()
