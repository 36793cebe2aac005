"""Preference rows are tokenized once, in the data stage, with exact labels: the prompt's tokens
are identical on both sides, -100 on the prompt, ids on the completions; the same ids TRL 1.16
produced for the fixture's 16 pairs (tests/fixtures/trl/); Axolotl's string types render their
exact text; the length policy cuts prompts first."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tuner.config.schema import DatasetConfig
from tuner.data.formats import EncodeContext, FieldError, get_format
from tuner.data.formats.preference import PairEncoded, pair_row
from tuner.data.tokenize import KEPT, NOTHING_TO_TRAIN, TOO_LONG

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "trl"
sys.path.insert(0, str(FIXTURES))
from pairs import PAIRS_CONVERSATIONAL, PAIRS_PLAIN  # noqa: E402

CASES = json.loads((FIXTURES / "preference" / "fixture.json").read_text())["cases"]
NEWLINE = 198  # SmolLM2's "\n"


def dataset(rl: str = "dpo", **keys) -> DatasetConfig:
    ds = DatasetConfig(path="pairs.jsonl", **keys)
    ds._rl = rl
    return ds


def encode(ds: DatasetConfig, rows: list[dict], tokenizer) -> list:
    template = tokenizer.chat_template if get_format(ds).chat else None
    return get_format(ds).encode_many(rows, ds, EncodeContext(tokenizer, template=template))


def test_chat_pairs_share_the_prompt_and_match_trl_conversational_tokens(smol_tokenizer):
    ds = dataset(type="chat_template.default", field_messages="prompt")
    encoded = encode(ds, PAIRS_CONVERSATIONAL, smol_tokenizer)
    trl = CASES["dpo_sigmoid"]["tokens"]
    for pair, ours in zip(trl, encoded):
        assert ours.prompt == pair["prompt_ids"]  # SmolLM2's default system prompt included, as TRL renders it
        # TRL's conversational path also trains the newline the template writes after <|im_end|>;
        # tuner's chat_template.default ends each completion at its end-of-turn token, as Axolotl's does.
        assert pair["chosen_ids"][-1] == NEWLINE and ours.chosen == pair["chosen_ids"][:-1]
        assert pair["rejected_ids"][-1] == NEWLINE and ours.rejected == pair["rejected_ids"][:-1]
        assert ours.chosen[-1] == smol_tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_plain_pairs_match_trl_plain_tokens(smol_tokenizer):
    encoded = encode(dataset(type="passthrough"), PAIRS_PLAIN, smol_tokenizer)
    for pair, ours in zip(CASES["dpo_sigmoid_plain"]["tokens"], encoded):
        assert (ours.prompt, ours.chosen, ours.rejected) == (pair["prompt_ids"], pair["chosen_ids"], pair["rejected_ids"])


def test_kto_chat_rows_match_trl_prompt_and_completion(smol_tokenizer):
    kto = CASES["kto"]
    rows = [{"prompt": p["prompt"], "completion": p[side], "label": side == "chosen"}
            for side in ("chosen", "rejected") for p in PAIRS_CONVERSATIONAL]
    encoded = encode(dataset("kto", type="chat_template.default", field_messages="prompt"), rows, smol_tokenizer)
    by_prompt = {tuple(r["prompt_ids"] + r["completion_ids"]): r for r in kto["tokens"]}
    matched = 0
    for ours in encoded:
        trl = by_prompt.get(tuple(ours.prompt + ours.completion + [NEWLINE]))
        if trl is not None:
            assert bool(trl["label"]) == ours.desirable and trl["prompt_ids"] == ours.prompt
            matched += 1
    assert matched == len(kto["tokens"])


def test_a_pair_row_labels_only_the_completions_and_the_prompt_is_identical():
    row = pair_row(PairEncoded([1, 2, 3], [4, 5], [6, 7, 8]), sequence_len=16, strategy="drop", max_prompt_len=None)
    assert row["status"] == KEPT and row["prompt_len"] == 3
    assert row["chosen_input_ids"] == [1, 2, 3, 4, 5] and row["chosen_labels"] == [-100, -100, -100, 4, 5]
    assert row["rejected_input_ids"] == [1, 2, 3, 6, 7, 8] and row["rejected_labels"] == [-100, -100, -100, 6, 7, 8]


def test_long_pairs_are_dropped_or_cut_prompt_first():
    pair = PairEncoded(list(range(10, 20)), [1, 2, 3, 4], [5, 6])  # 10 + 4 > 12
    assert pair_row(pair, 12, "drop", None)["status"] == TOO_LONG
    cut = pair_row(pair, 12, "truncate", max_prompt_len=6)
    assert cut["status"] == KEPT and cut["truncated"]
    assert cut["chosen_input_ids"] == [14, 15, 16, 17, 18, 19, 1, 2, 3, 4]  # the prompt's last 6 tokens, then the answer
    assert cut["rejected_input_ids"] == [14, 15, 16, 17, 18, 19, 5, 6]
    tight = pair_row(PairEncoded(list(range(10, 20)), list(range(30, 40)), [5]), 12, "truncate", None)
    assert tight["prompt_len"] == 6 and len(tight["chosen_input_ids"]) == 12  # default: half of sequence_len
    assert pair_row(PairEncoded([1, 2], [], [3]), 12, "drop", None)["status"] == NOTHING_TO_TRAIN


@pytest.mark.parametrize("family,start,end", [("chatml", "<|im_start|>user\n", "<|im_end|>"),
                                              ("llama3", "<|start_header_id|>user<|end_header_id|>\n\n", "<|eot_id|>")])
def test_axolotl_string_types_write_axolotl_text(family, start, end):
    fmt = get_format(dataset(type=f"{family}.intel"))
    text = fmt.text({"system": "Be brief.", "question": "Why?", "chosen": "Because.", "rejected": "No."}, None, None)
    assert text.prompt.startswith({"chatml": "<|im_start|>system\nBe brief.<|im_end|>\n",
                                   "llama3": "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"}[family])
    assert start + "Why?" in text.prompt and text.chosen == "Because." + end and text.rejected == "No." + end
    argilla = get_format(dataset(type=f"{family}.argilla_chat")).text(
        {"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
         "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go."}]}, None, None)
    assert start + "Hi" in argilla.prompt and argilla.chosen == "Hello." + end and argilla.rejected == "Go." + end


def test_a_bad_row_names_the_field(smol_tokenizer):
    ds = dataset(type="chat_template.default", field_messages="prompt")
    [bad] = encode(ds, [{"prompt": [{"role": "user", "content": "Hi"}], "rejected": "No."}], smol_tokenizer)
    assert isinstance(bad, FieldError) and bad.field == "chosen"
    [bad] = encode(dataset("kto", type="chat_template.default"), [{"messages": "Hi", "completion": "x", "label": "yes"}],
                   smol_tokenizer)
    assert isinstance(bad, FieldError) and bad.field == "label"
