"""llama.cpp's side of bench/check_gguf.py, run with the llama-cpp-python venv's Python
(it needs only llama_cpp, numpy and jinja2; never torch or tuner).

    python bench/_llama_worker.py decode REQUEST.json OUT.json
    python bench/_llama_worker.py logits REQUEST.json OUT.json

decode: {"model": PATH, "conversations": [[{role, content}, ...], ...], "max_new_tokens": N}
  Each conversation is rendered by llama-cpp-python's Jinja2ChatFormatter from the chat template
  embedded in the file (what create_chat_completion uses), tokenized by llama.cpp's tokenizer
  (special tokens parsed, no BOS added: the template writes its own), then decoded greedily
  (argmax of llama.cpp's logits) until EOS or N tokens.
logits: {"models": {NAME: PATH}, "tokens": [ids]}: the logits llama.cpp computes at every position
  (float32 KV cache, so that only the model's conversion is measured), saved as OUT.npz.

$CHECK_GGUF_THREADS: llama.cpp's threads (default 1; see check_gguf.py).
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

GGML_TYPE_F32 = 0
THREADS = int(os.environ.get("CHECK_GGUF_THREADS", "1"))


def load(path: str, n_ctx: int, **kwargs) -> Llama:
    return Llama(model_path=path, n_ctx=n_ctx, n_batch=n_ctx, n_threads=THREADS, n_threads_batch=THREADS,
                 logits_all=True, verbose=False, seed=0, **kwargs)


def decode(request: dict) -> dict:
    t0 = time.perf_counter()
    llm = load(request["model"], 512)
    load_seconds = time.perf_counter() - t0
    template = llm.metadata["tokenizer.chat_template"]
    eos = llm.token_eos()
    bos = llm.token_bos()
    formatter = Jinja2ChatFormatter(template=template, eos_token=llm.detokenize([eos], special=True).decode(),
                                    bos_token=llm.detokenize([bos], special=True).decode() if bos >= 0 else "")
    results = []
    t0 = time.perf_counter()
    for messages in request["conversations"]:
        prompt = formatter(messages=messages).prompt
        tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        llm.reset()
        llm.eval(tokens)
        generated: list[int] = []
        for _ in range(request["max_new_tokens"]):
            logits = llm.scores[llm.n_tokens - 1]
            token = int(np.argmax(logits))
            generated.append(token)
            if token == eos:
                break
            llm.eval([token])
        results.append({"prompt": prompt, "prompt_tokens": tokens, "generated": generated,
                        "text": llm.detokenize([t for t in generated if t != eos]).decode("utf-8", "replace")})
    return {"template": template, "eos": eos, "load_seconds": load_seconds,
            "decode_seconds": time.perf_counter() - t0, "results": results}


def logits(request: dict) -> dict:
    out = {}
    for name, path in request["models"].items():
        llm = load(path, max(64, len(request["tokens"])), type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32)
        llm.reset()
        llm.eval(request["tokens"])
        out[name] = np.array(llm.scores[: llm.n_tokens], dtype=np.float32)
        del llm
    return out


if __name__ == "__main__":
    mode, request_path, out_path = sys.argv[1:4]
    with open(request_path, encoding="utf-8") as f:
        request = json.load(f)
    if mode == "logits":
        np.savez(out_path, **logits(request))
    else:
        with open(out_path, "w", encoding="utf-8") as f:
            json.dump(decode(request), f)
