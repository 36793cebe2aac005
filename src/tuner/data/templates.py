"""Chat templates: the tokenizer's own, a named built-in, or one given in the config.

Whichever template prepares the data is returned with the prepared data, and the training
loop sets it on the tokenizer it saves, so the saved tokenizer carries the template that
trained the model.
"""

from __future__ import annotations

from typing import Any

from tuner.config.schema import DataBlock
from tuner.errors import UserError

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

LLAMA3 = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

BUILT_IN = {"chatml": CHATML, "llama3": LLAMA3}


def uses_chat(data: DataBlock) -> bool:
    return any(ds.kind == "chat_template" for ds in [*data.datasets, *(data.test_datasets or [])])


def resolve(data: DataBlock, tokenizer: Any) -> str | None:
    """The template text the config asks for (None when no dataset needs one and none is set)."""
    if data.chat_template_jinja:
        return data.chat_template_jinja
    if data.chat_template in BUILT_IN:
        return BUILT_IN[data.chat_template]
    if data.chat_template == "tokenizer_default" or uses_chat(data):
        own = getattr(tokenizer, "chat_template", None)
        if not own:
            if uses_chat(data):
                raise UserError(
                    "chat_template: the tokenizer has no chat template of its own; set "
                    "`chat_template: chatml` (or llama3), or give one in chat_template_jinja"
                )
            return None
        if isinstance(own, dict):  # several named templates: the default one
            own = own.get("default") or next(iter(own.values()))
        return own
    return None
