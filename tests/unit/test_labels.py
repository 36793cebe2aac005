"""Exact labels for known rows, with the real SmolLM2 tokenizer (no weights)."""

from __future__ import annotations

import pytest

from tuner.data.formats import alpaca, completion
from tuner.data.pack import pad_batch
from tuner.data.tokenize import IGNORE, KEPT, NOTHING_TO_TRAIN, TOO_LONG, TokenizeSettings, tokenize_rows

EOS = 2  # SmolLM2: <|im_end|> is both EOS and pad


def settings(seq=512, strategy="drop", train_on_inputs=False):
    return TokenizeSettings(seq, strategy, train_on_inputs)


def test_alpaca_prompt_text_is_axolotls():
    row = {"instruction": "Name a color.", "input": "", "output": "Blue"}
    assert alpaca.prompt(row) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nName a color.\n\n### Response:\n"
    )
    row["input"] = "sky"
    assert alpaca.prompt(row).endswith("### Instruction:\nName a color.\n\n### Input:\nsky\n\n### Response:\n")


def test_alpaca_labels_exact(smol_tokenizer):
    tok = smol_tokenizer
    row = {"instruction": "Name a color.", "input": "", "output": "Blue"}
    [out] = tokenize_rows([alpaca.segments(row)], tok, settings())
    prompt_ids = tok(alpaca.prompt(row))["input_ids"]
    answer_ids = tok("Blue", add_special_tokens=False)["input_ids"]
    assert out["input_ids"] == prompt_ids + answer_ids + [EOS]
    assert out["labels"] == [IGNORE] * len(prompt_ids) + answer_ids + [EOS]
    assert out["attention_mask"] == [1] * len(out["input_ids"])
    assert out["status"] == KEPT
    # The trained text is exactly the answer plus EOS.
    trained = [t for t in out["labels"] if t != IGNORE]
    assert tok.decode(trained) == "Blue<|im_end|>"


def test_train_on_inputs_trains_everything(smol_tokenizer):
    row = {"instruction": "Name a color.", "input": "x", "output": "Blue"}
    [out] = tokenize_rows([alpaca.segments(row)], smol_tokenizer, settings(train_on_inputs=True))
    assert out["labels"] == out["input_ids"]


def test_completion_trains_all_and_appends_eos(smol_tokenizer):
    [out] = tokenize_rows([completion.segments({"text": "Hello world"})], smol_tokenizer, settings())
    ids = smol_tokenizer("Hello world")["input_ids"]
    assert out["input_ids"] == ids + [EOS]
    assert out["labels"] == ids + [EOS]


def test_eos_not_doubled(smol_tokenizer):
    [out] = tokenize_rows([completion.segments({"text": "Hi<|im_end|>"})], smol_tokenizer, settings())
    assert out["input_ids"].count(EOS) == 1 and out["input_ids"][-1] == EOS


def test_excess_length_policies(smol_tokenizer):
    segs = [completion.segments({"text": "word " * 50})]
    [dropped] = tokenize_rows(segs, smol_tokenizer, settings(seq=16, strategy="drop"))
    assert dropped["status"] == TOO_LONG
    [cut] = tokenize_rows(segs, smol_tokenizer, settings(seq=16, strategy="truncate"))
    assert cut["status"] == KEPT and cut["truncated"] and len(cut["input_ids"]) == 16 and len(cut["labels"]) == 16
    [raised] = tokenize_rows(segs, smol_tokenizer, settings(seq=16, strategy="raise"))
    assert raised["status"] == TOO_LONG  # the pipeline turns this into an error naming the row


def test_truncation_that_removes_the_answer_leaves_nothing_to_train(smol_tokenizer):
    row = {"instruction": "word " * 40, "input": "", "output": "Blue"}
    [out] = tokenize_rows([alpaca.segments(row)], smol_tokenizer, settings(seq=20, strategy="truncate"))
    assert out["status"] == NOTHING_TO_TRAIN


def test_pad_equal_to_eos_still_trains_eos(smol_tokenizer):
    """Padding is masked by position: a real EOS with the pad id keeps its label."""
    tok = smol_tokenizer
    assert tok.pad_token_id == tok.eos_token_id == EOS
    short = tokenize_rows([alpaca.segments({"instruction": "A", "input": "", "output": "B"})], tok, settings())[0]
    long = tokenize_rows([alpaca.segments({"instruction": "A " * 20, "input": "", "output": "B C D"})], tok, settings())[0]
    batch = pad_batch([short["input_ids"], long["input_ids"]], [short["labels"], long["labels"]], tok.pad_token_id)
    n = len(short["input_ids"])
    assert batch["labels"][0, n - 1] == EOS  # the row's own EOS is trained
    assert (batch["labels"][0, n:] == IGNORE).all()  # padding (same id!) is not
    assert (batch["input_ids"][0, n:] == EOS).all()
    assert batch["attention_mask"][0, :n].all() and not batch["attention_mask"][0, n:].any()
    assert batch["labels"][1, -1] == EOS and batch["attention_mask"][1].all()


@pytest.mark.parametrize(
    "row, field",
    [
        ({"instruction": "x", "input": ""}, "output"),
        ({"instruction": "x", "input": "", "output": 3}, "output"),
        ({"input": "", "output": "y"}, "instruction"),
        ({"instruction": "  ", "input": "", "output": "y"}, "instruction"),
    ],
)
def test_bad_rows_name_the_field(row, field):
    from tuner.data.formats import FieldError

    with pytest.raises(FieldError) as info:
        alpaca.segments(row)
    assert info.value.field == field
