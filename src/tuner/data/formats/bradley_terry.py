"""`bradley_terry.chat_template` (reward models, `reward_model: true`): Axolotl's Bradley-Terry
rows, rendered with the chat template.

Two row shapes:
  * Axolotl's: `input` (the user's prompt), `chosen` and `rejected` (the answers, strings or
    messages), optional `system`;
  * whole conversations (TRL's implicit prompt): `chosen` and `rejected` are lists of messages
    that share every message but the last (the answer).

Either way the pair is a prompt (rendered with the generation prompt) and two completions,
exactly as `chat_template.default` pairs are (tuner.data.formats.preference), so a reward model
reads the same prepared pairs as DPO: chosen_input_ids = prompt + chosen answer.
"""

from __future__ import annotations

from typing import Any

from tuner.config.schema import DatasetConfig
from tuner.data.formats import chat_template
from tuner.data.formats.base import EncodeContext, FieldError, register
from tuner.data.formats.preference import PairText, PreferenceFormat, _conversation, _render_completions

PROMPT_FIELD = "input"


class BradleyTerryChat(PreferenceFormat):
    name = "bradley_terry.chat_template"
    chat = True

    def field_names(self, ds: DatasetConfig | None) -> tuple[str, ...]:
        assert ds is not None
        return (PROMPT_FIELD, ds.field_chosen, ds.field_rejected, chat_template.ROW_SYSTEM)

    def fields(self, row: dict[str, Any], ds: DatasetConfig | None) -> Any:
        assert ds is not None
        chosen, rejected = row.get(ds.field_chosen), row.get(ds.field_rejected)
        field = ds.field_messages
        if row.get(PROMPT_FIELD) is None and isinstance(chosen, list) and isinstance(rejected, list):
            if len(chosen) < 2 or len(rejected) < 2:
                raise FieldError(ds.field_chosen, "as a conversation needs the prompt's messages and the answer")
            if chosen[:-1] != rejected[:-1]:
                raise FieldError(ds.field_rejected, f"must share every message but the last with {ds.field_chosen} "
                                                    "(the prompt)")
            pair = {field: chosen[:-1], ds.field_chosen: chosen[-1], ds.field_rejected: rejected[-1],
                    chat_template.ROW_SYSTEM: row.get(chat_template.ROW_SYSTEM)}
        else:
            prompt = row.get(PROMPT_FIELD)
            if not isinstance(prompt, str) or not prompt.strip():
                raise FieldError(PROMPT_FIELD, f"must be the user's prompt (a string), got {prompt!r}; or give "
                                               f"{ds.field_chosen} / {ds.field_rejected} as whole conversations")
            pair = {field: prompt, ds.field_chosen: chosen, ds.field_rejected: rejected,
                    chat_template.ROW_SYSTEM: row.get(chat_template.ROW_SYSTEM)}
        return _conversation(pair, ds, ("chosen", "rejected"))

    def text(self, row: dict[str, Any], ds: DatasetConfig | None, ctx: EncodeContext | None) -> PairText:
        assert ds is not None and ctx is not None
        prompt, completions = _render_completions(*self.fields(row, ds), ctx, ds)
        return PairText(prompt, completions["chosen"], completions["rejected"], rendered=True)


register(BradleyTerryChat())
