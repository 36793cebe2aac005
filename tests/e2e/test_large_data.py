"""A corpus larger than a memory limit is prepared under that limit: `tuner preprocess` writes the
tokenized rows to disk as it makes them (Arrow files, memory-mapped back), so its memory does not
grow with the data.

The limit is RLIMIT_DATA, which the kernel enforces on a process's private writable memory (its
heap, anonymous mappings); memory-mapped Arrow files read from disk are page cache, not counted.
The corpus (text) and the prepared tokens (Arrow) are each larger than the limit. tuner before
this (all tokenized rows held in memory, batches of 1,000 rows whatever their size) fails under it:
checked by hand with PYTHONPATH pointing at that version's src, the tokenizer's first batch of
1,000 long documents already could not allocate. A word-level tokenizer built here keeps the
tokenizer's own time small (about 3 minutes in all, corpus included), so that the test spends
its time on the data path, not on BPE.
"""

from __future__ import annotations

import json
import os
import random
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

LIMIT = 768 << 20  # bytes of private writable memory the preprocess process may have
CORPUS_BYTES = 800 << 20  # text: larger than LIMIT; its tokens in Arrow (9 bytes each) are larger still
WORDS = 4000


def _tokenizer(folder: Path, words: list[str]) -> None:
    """A word-level fast tokenizer (whitespace split, one id per word) as an HF folder tuner loads."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "pad_token": "</s>", "model_max_length": 1 << 20}))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))


SEQ = 4096


def _corpus(path: Path, words: list[str]) -> tuple[int, int]:
    """Documents of 5,000 to 12,000 words (each longer than sequence_len) until CORPUS_BYTES:
    (documents, the tokens their pieces keep: every word and each document's EOS, less a last
    piece of a single token, which has nothing to train and is dropped)."""
    rng = random.Random(0)
    docs = tokens = size = 0
    with open(path, "w", encoding="utf-8") as fh:
        while size < CORPUS_BYTES:
            n = rng.randint(5000, 12000)
            line = json.dumps({"text": " ".join(rng.choices(words, k=n))}) + "\n"
            fh.write(line)
            size += len(line)
            docs += 1
            tokens += n + 1 - ((n + 1) % SEQ == 1)
    return docs, tokens


def _peak_rss(pid: int, stop: threading.Event, out: list[int]) -> None:
    """Sample the process's resident memory (anonymous and file-backed) every 0.1 s."""
    while not stop.is_set():
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        out.append(int(fields.get("RssAnon", "0 kB").split()[0]) << 10)
        time.sleep(0.1)


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_DATA, (LIMIT, LIMIT))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_DATA and /proc are Linux's")
def test_a_corpus_larger_than_the_memory_limit_is_prepared_under_it(tmp_path):
    rng = random.Random(1)
    words = sorted({"".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(3, 9))) for _ in range(WORDS)})
    base = tmp_path / "tokenizer"
    _tokenizer(base, words)
    corpus = tmp_path / "corpus.jsonl"
    docs, tokens = _corpus(corpus, words)
    prepared = tmp_path / "prepared"
    (tmp_path / "cfg.yml").write_text(
        f"base_model: {base}\ndatasets:\n  - path: {corpus}\n    type: completion\n"
        f"dataset_prepared_path: {prepared}\nsequence_len: {SEQ}\nexcess_length_strategy: split\n"
        "dataset_num_proc: 1\nlearning_rate: 1.0e-4\nmax_steps: 1\n")
    # pyarrow's default allocator (jemalloc) reserves about a GiB of address space at start, which
    # RLIMIT_DATA counts although it is not memory in use; the system allocator reserves none.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf-cache"),
           "ARROW_DEFAULT_MEMORY_POOL": "system", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "tuner", "preprocess", "cfg.yml"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=_limit_memory)
    samples: list[int] = []
    stop = threading.Event()
    sampler = threading.Thread(target=_peak_rss, args=(proc.pid, stop, samples))
    sampler.start()
    output, _ = proc.communicate(timeout=900)
    stop.set()
    sampler.join()
    assert proc.returncode == 0, output[-3000:]

    (folder,) = [p for p in prepared.iterdir() if not p.name.startswith(".")]
    assert not [p for p in prepared.iterdir() if ".scratch-" in p.name]  # the rows made on the way are gone
    stats = json.loads((folder / "meta.json").read_text())["stats"]
    # every word is a token, each document ends in EOS, and split cut every document into pieces
    assert stats["tokens"] == tokens
    assert stats["sources"][0]["read"] == docs and stats["sources"][0]["split"] == docs
    arrow = sum(p.stat().st_size for p in folder.rglob("*.arrow"))
    assert len(list(folder.rglob("*.arrow"))) > 1  # saved in shards, loaded memory-mapped
    assert corpus.stat().st_size > LIMIT and arrow > LIMIT  # the data, raw and prepared, exceeds the limit
    peak = max(samples)
    print(f"corpus {corpus.stat().st_size / 2**20:,.0f} MiB of text, {stats['tokens']:,} tokens, "
          f"{arrow / 2**20:,.0f} MiB prepared; limit {LIMIT >> 20} MiB; peak anonymous RSS {peak / 2**20:,.0f} MiB")
    assert peak < LIMIT
