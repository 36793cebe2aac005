"""The dataset `type` names a config may write, declared once.

Validation must know every name, and config may not import the data stage (an
import-linter contract holds it), so the names live here, as plain data. The data stage
implements exactly these: each format in `tuner.data.formats` registers under one of the
`KINDS` below (`register` refuses an undeclared name), and tests/unit/test_formats.py
checks that every declared kind has a format. A new dataset type is one name here and one
format there.

Four kinds of names:
  * tuner's own types (`MAIN_TYPES`), the ones error messages list;
  * the instruction types of Axolotl's prompt strategies (alpaca's siblings: jeopardy,
    oasst, context_qa, ...), each an exact rendering of Axolotl's prompt text;
  * legacy spellings that tuner reads as a modern type (`sharegpt` -> chat_template with
    ShareGPT's field names), each with a notice that names what to write instead
    (`rewrite_legacy`);
  * Axolotl types for objectives tuner does not train yet (process rewards, pretraining, ...),
    refused with the capability named (`UNSUPPORTED_PREFIXES`).
"""

from __future__ import annotations

from typing import Any

MAIN_TYPES = ("alpaca", "completion", "chat_template", "input_output")

# Axolotl's `type: NAME:STYLE` types: an instruction format whose prompt style (Axolotl's
# PromptStyle) is chosen by the suffix. `NAME` alone is the instruct style.
PROMPT_STYLES = ("instruct", "chat", "chatml", "phi")
STYLED_TYPES = ("alpaca", "explainchoice", "concisechoice", "summarizetldr", "jeopardy", "oasst", "gpteacher",
                "reflection")

# Axolotl's other SFT prompt strategies (src/axolotl/prompt_strategies/*.py, `module.load_fn`).
AXOLOTL_TYPES = (
    "alpaca_chat", "alpaca_chat.load_qa", "alpaca_chat.load_concise", "alpaca_chat.load_camel_ai",
    "alpaca_chat.load_no_prompt",
    "alpaca_instruct", "alpaca_instruct.load_no_prompt",
    "alpaca_w_system", "alpaca_w_system.load_instruct", "alpaca_w_system.load_chat",
    "alpaca_w_system.load_open_orca", "alpaca_w_system.load_open_orca_chatml",
    "context_qa", "context_qa.load_404", "context_qa.load_v2",
    "creative_acr.load_answer", "creative_acr.load_critique", "creative_acr.load_revise",
    "metharme", "orcamini", "pygmalion",
)

# Sequence classification (a *ForSequenceClassification head): a text and its label per row.
CLASSIFICATION_TYPES = ("classification",)

DATASET_TYPES: tuple[str, ...] = (
    MAIN_TYPES
    + tuple(f"{name}:{style}" for name in STYLED_TYPES for style in PROMPT_STYLES)
    + tuple(name for name in STYLED_TYPES if name not in MAIN_TYPES)
    + AXOLOTL_TYPES
    + CLASSIFICATION_TYPES
)
# Every format kind (`DatasetConfig.kind`): the names above, plus a mapping given as `type`
# and rows of token ids (`type` left out).
KINDS: tuple[str, ...] = DATASET_TYPES + ("user_defined", "pretokenized")

# Preference types (`rl:`), as Axolotl's prompt_strategies/dpo and /kto name them. Under `rl: kto`
# the same names read unpaired rows: their formats are registered as "kto:" + name.
PAIR_VARIANTS = ("default", "icr", "intel", "prompt_pairs", "ultra", "argilla_chat")
KTO_VARIANTS = ("argilla", "intel", "prompt_pairs", "ultra", "argilla_chat")
PREFERENCE_TYPES: tuple[str, ...] = (
    ("chat_template.default", "passthrough")
    + tuple(f"{family}.{variant}" for family in ("chatml", "llama3") for variant in PAIR_VARIANTS)
)
KTO_TYPES: tuple[str, ...] = (
    ("chat_template.default", "passthrough")
    + tuple(f"{family}.{variant}" for family in ("chatml", "llama3") for variant in KTO_VARIANTS)
)
KINDS += PREFERENCE_TYPES + tuple(f"kto:{name}" for name in KTO_TYPES) + ("user_defined_pairs", "user_defined_unpaired")
# Reward models (`reward_model: true`) read the pair types above and Axolotl's Bradley-Terry type.
REWARD_TYPES: tuple[str, ...] = ("bradley_terry.chat_template",)
KINDS += REWARD_TYPES
# Online RL (`rl: grpo`): prompts only. `type: chat_template` (or no type) reads each row's messages, ending in a
# user turn, or its `prompt` string.
GRPO_KIND = "grpo:prompts"
KINDS += (GRPO_KIND,)


def preference_kind(name: str | None, rl: str) -> str:
    """The format kind a dataset `type` reads as under `rl:` (KTO: the "kto:" forms). A mapping
    (`name` "user_defined") is the user-defined preference type; `chat_template` alone means
    chat_template.default, as in Axolotl's preference strategies."""
    if rl == "grpo":  # prompts to sample from (tuner.data.formats.prompts); other names are refused by validation
        return GRPO_KIND if name in (None, "chat_template") else name
    if name is None:
        return "pretokenized"
    if name == "user_defined":
        return "user_defined_unpaired" if rl == "kto" else "user_defined_pairs"
    name = "chat_template.default" if name == "chat_template" else name
    return f"kto:{name}" if rl == "kto" else name


def is_preference_type(name: Any) -> bool:
    """A `type` name only preference training reads (so, without `rl:`, a missing `rl:`)."""
    return isinstance(name, str) and (name in PREFERENCE_TYPES or name in KTO_TYPES) and name not in DATASET_TYPES


def is_reward_type(name: Any) -> bool:
    """A `type` name only reward-model training reads (so, without `reward_model: true`, a missing key)."""
    return isinstance(name, str) and name in REWARD_TYPES

# Axolotl types of objectives tuner does not train yet: prefix -> the capability.
UNSUPPORTED_PREFIXES = {
    "bradley_terry": "Axolotl's other Bradley-Terry strategies (tuner reads bradley_terry.chat_template)",
    "stepwise_supervised": "process-reward-model training (stepwise labels)",
    "pretrain": "streaming pretraining datasets (pretraining_dataset)",
    "ebft": "Axolotl's EBFT trainer",
    "rwd.": "reward functions for online RL (GRPO)",
    "chat_template.": "Axolotl preference strategies tuner does not have (argilla-style conversations)",
    "chatml.": "Axolotl preference strategies tuner does not have",
    "llama3.": "Axolotl preference strategies tuner does not have",
    "zephyr.": "Axolotl preference strategies tuner does not have (zephyr.nectar)",
    "user_defined.": "Axolotl preference strategies tuner does not have (write `type` as a mapping)",
    "dpo": "Axolotl preference strategies tuner does not have",
    "kto": "Axolotl preference strategies tuner does not have",
    "orpo": "Axolotl's ORPO strategies (orpo.chat_template.argilla)",
}


# Dataset keys of objectives tuner does not train yet: key -> the capability (refused "not supported yet").
UNSUPPORTED_KEYS = {
    **{key: "preference training (DPO/ORPO/KTO datasets, with `rl:`)"
       for key in ("field_prompt", "field_system_prompt", "chosen_key", "rejected_key")},
    **{key: "process-reward-model training (stepwise labels)"
       for key in ("step_separator", "max_completion_length", "train_on_last_step_only")},
}


def unsupported(name: str) -> str | None:
    """The capability a dataset type of another objective needs, or None."""
    for prefix, what in UNSUPPORTED_PREFIXES.items():
        if name == prefix or name.startswith(prefix if prefix.endswith(".") else (prefix + ".", prefix + "_", prefix + ":")):
            return what
    return None


# --------------------------------------------------------------------------- legacy spellings

SHAREGPT_MAPPING = {"role": "from", "content": "value"}
# FastChat conversation names (old `sharegpt` + `conversation:`) -> tuner's named chat template.
CONVERSATIONS = {
    "chatml": "chatml",
    "llama-2": "llama2",
    "llama2": "llama2",
    "llama-3": "llama3",
    "llama3": "llama3",
    "vicuna_v1.1": "vicuna",
    "mistral": "mistral_v1",
    "gemma": "gemma",
    "phi3": "phi_3",
    "zephyr": "zephyr",
}
# Old ShareGPT loaders: type -> (field_messages, message_property_mappings, extra role aliases).
SHAREGPT_LOADERS: dict[str, tuple[str, dict[str, str], dict[str, list[str]]]] = {
    "sharegpt": ("conversations", SHAREGPT_MAPPING, {}),
    "sharegpt:chat": ("conversations", SHAREGPT_MAPPING, {}),
    "sharegpt.load": ("conversations", SHAREGPT_MAPPING, {}),
    "sharegpt.load_role": ("conversations", {"role": "role", "content": "value"}, {}),
    "sharegpt.load_ultrachat": ("messages", {"role": "role", "content": "content"}, {}),
    "sharegpt.load_guanaco": ("conversations", {"role": "role", "content": "text"}, {"user": ["prompter"]}),
    "llama2_chat": ("conversations", SHAREGPT_MAPPING, {}),
    "messages": ("messages", {"role": "role", "content": "content"}, {}),
}
Notice = tuple[str, str]  # (dataset key, message): a legacy spelling tuner read, and what to write


def rewrite_legacy(entry: dict[str, Any]) -> tuple[dict[str, Any], list[Notice]]:
    """A `datasets` entry with legacy spellings rewritten to what tuner does, and one notice per
    rewrite naming the modern key. Values that cannot be rewritten are left for validation."""
    entry = dict(entry)
    notices: list[Notice] = []
    kind = entry.get("type")
    if isinstance(kind, str) and kind in SHAREGPT_LOADERS:
        notices += _sharegpt(entry, kind)
    elif isinstance(kind, str) and kind.startswith("alpaca_chat") and entry.get("conversation") in PROMPT_STYLES:
        style = entry.pop("conversation")
        if kind == "alpaca_chat":
            entry["type"] = f"alpaca:{style}"
            notices.append(("conversation", f"`type: alpaca_chat` with `conversation: {style}` is read as "
                                            f"`type: alpaca:{style}` (write that instead)"))
    if entry.get("type") == "chat_template" and (entry.get("field_human") or entry.get("field_model")):
        notices += _role_names(entry)
    for old, new in (("message_field_role", "role"), ("message_field_content", "content")):
        if old in entry:
            value = entry.pop(old)
            if value is None:
                continue
            mapping = dict(entry.get("message_property_mappings") or {})
            if mapping.get(new, value) != value:
                entry[old] = value  # a conflict: left for validation to refuse, naming both keys
                continue
            mapping[new] = value
            entry["message_property_mappings"] = mapping
            notices.append((old, f"`{old}: {value}` is deprecated; read as "
                                 f"`message_property_mappings: {{{new}: {value}}}` (write that instead)"))
    return entry, notices


def default_roles() -> dict[str, list[str]]:
    """Role names as they appear in common datasets, per role: what `type: chat_template` reads
    when `roles:` is not given."""
    return {"system": ["system"], "user": ["user", "human"], "assistant": ["assistant", "gpt", "model", "bot"],
            "tool": ["tool", "function", "ipython"]}


def _add_role_names(entry: dict[str, Any], roles: dict[str, list[str]]) -> list[str]:
    """Move `field_human` / `field_model` (ShareGPT's role names) into `roles`; what was added."""
    renamed = []
    for key, role in (("field_human", "user"), ("field_model", "assistant")):
        value = entry.pop(key, None)
        if value:
            roles[role] = roles[role] + [value]
            renamed.append(f"{role}: [{value}]")
    return renamed


def _role_names(entry: dict[str, Any]) -> list[Notice]:
    """`field_human` / `field_model` on a chat_template entry: extra role names."""
    if entry.get("roles"):
        return []  # `roles` given too: left for validation to refuse, naming both
    roles = default_roles()
    keys = [k for k in ("field_human", "field_model") if entry.get(k)]
    renamed = _add_role_names(entry, roles)
    entry["roles"] = roles
    return [(keys[0], f"`{'` and `'.join(keys)}` {'is a legacy key' if len(keys) == 1 else 'are legacy keys'}; read as "
                      f"`roles: {{{', '.join(renamed)}, ...}}` (write that instead)")]


def _sharegpt(entry: dict[str, Any], kind: str) -> list[Notice]:
    field_messages, mapping, extra_roles = SHAREGPT_LOADERS[kind]
    entry["type"] = "chat_template"
    entry.setdefault("field_messages", field_messages)
    if not entry.get("message_property_mappings") and "message_field_role" not in entry \
            and "message_field_content" not in entry:
        entry["message_property_mappings"] = dict(mapping)
    roles = default_roles()
    for role, names in extra_roles.items():
        roles[role] = roles[role] + names
    renamed = _add_role_names(entry, roles)
    if extra_roles or renamed:
        entry.setdefault("roles", roles)
    written = [f"type: chat_template", f"field_messages: {entry['field_messages']}"]
    written.append("message_property_mappings: {" + ", ".join(f"{k}: {v}" for k, v in
                                                             entry["message_property_mappings"].items()) + "}")
    if renamed:
        written.append("roles: {" + ", ".join(renamed) + ", ...}")
    template = None
    conversation = entry.pop("conversation", None)
    if kind == "llama2_chat":
        template = "llama2"
    elif conversation is not None:
        template = CONVERSATIONS.get(conversation)
        if template is None:
            entry["conversation"] = conversation  # refused by validation, listing the names tuner knows
    if template is not None and "chat_template" not in entry:
        entry["chat_template"] = template
        written.append(f"chat_template: {template}")
    why = "" if kind != "llama2_chat" else " (the llama2 chat template; Axolotl's default system prompt is not added)"
    return [("type", f"`type: {kind}` is deprecated (Axolotl removed it); read as `{'`, `'.join(written)}`{why}"
                     " (write that instead)")]


# --------------------------------------------------------------------------- chat templates

# Named chat templates (`chat_template: NAME`), each shipped as tuner/data/chat_templates/NAME.jinja
# (tests/unit/test_axolotl_parity.py: each renders as Axolotl's template of that name does;
# tests/unit/test_chat.py: each trains exactly the answers and their end-of-turn tokens).
TEMPLATE_FILES = (
    "alpaca", "chatml", "cohere", "deepseek_v2", "deepseek_v3", "exaone", "falcon_h1", "gemma", "gemma3", "gemma4",
    "jamba", "llama2", "llama3", "llama4", "metharme", "mistral_v1", "mistral_v2v3", "mistral_v3_tekken", "nemotron_h",
    "phi_3", "phi_35", "phi_4", "qwen3", "qwen_25", "vicuna", "zephyr",
)
# Axolotl names whose text conversations render exactly as another's (they differ in images, audio or
# an unused default): name -> the file that renders them.
TEMPLATE_ALIASES = {"aya": "cohere", "gemma3n": "gemma3", "gemma4_unified": "gemma4", "qwen3_5": "qwen3"}
NAMED_TEMPLATES = tuple(sorted(TEMPLATE_FILES + tuple(TEMPLATE_ALIASES)))
FALLBACK_PREFIX = "tokenizer_default_fallback_"  # the tokenizer's own template, else the named one
CHAT_TEMPLATES = ("tokenizer_default", "jinja", *NAMED_TEMPLATES)
# Axolotl template names tuner does not ship, and why.
UNSHIPPED_TEMPLATES = {
    **{name: "a multimodal template (tuner trains text models)" for name in ("llava", "pixtral", "qwen2_vl",
                                                                            "llama3_2_vision")},
    **{name: "a template tuner does not ship yet (tool-use/RAG preambles or a date-dependent system prompt); use "
             "chat_template: tokenizer_default (the model's own) or chat_template_jinja"
       for name in ("command_a", "command_a_rag", "command_a_tool_use", "mistral_v7_tekken", "exaone4")},
}



def is_template_name(name: str) -> bool:
    """A `chat_template` value tuner renders with (a name, or tokenizer_default_fallback_NAME)."""
    return name in CHAT_TEMPLATES or (name.startswith(FALLBACK_PREFIX) and name[len(FALLBACK_PREFIX):] in NAMED_TEMPLATES)
