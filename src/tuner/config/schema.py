"""The config schema: one pydantic model per block of the (flat, Axolotl-style) YAML.

A tuner YAML is flat, like Axolotl's: `base_model`, `datasets`, `learning_rate` and
`lora_r` all sit at the top level. Each top-level key belongs to exactly one block
(`ModelBlock`, `DataBlock`, `TrainingBlock`, `AdapterBlock`); `load.py` routes the keys
and `TunerConfig` holds the typed blocks that flow through the rest of tuner.

Every block forbids unknown keys. Rules that involve several keys live in `check_rules`,
which returns problems tied to the key they are about, so the error names it.

This module imports only pydantic: `tuner validate` must not import torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, model_validator
from pydantic_core import PydanticCustomError
from pydantic import BeforeValidator

from tuner.config import dataset_types
from tuner.errors import did_you_mean
from tuner.config.dataset_types import CHAT_TEMPLATES, DATASET_TYPES, MAIN_TYPES

PositiveInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
Precision = Union[bool, Literal["auto"]]

# DATASET_TYPES and CHAT_TEMPLATES (the names `type:` and `chat_template:` accept) are declared in
# tuner.config.dataset_types, where the data stage's registry is checked against them.
TRAIN_ON_EOS = ("turn", "all", "last", "none")
FILE_TYPES = ("json", "csv", "parquet")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
# Optimizer names as the HF Trainer and Axolotl spell them; built in tuner.train.optim.
OPTIMIZERS = (
    "adamw_torch", "adamw_torch_fused", "adamw_bnb_8bit", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit",
    "adamw_torch_8bit", "adamw_torch_4bit", "lion_8bit", "lion_32bit", "paged_lion_8bit", "paged_lion_32bit",
    "ademamix", "ademamix_8bit", "paged_ademamix_8bit", "paged_ademamix_32bit", "rmsprop", "rmsprop_bnb",
    "rmsprop_bnb_8bit", "rmsprop_bnb_32bit", "adafactor", "sgd", "adagrad",
)
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")
ADAPTERS = ("lora", "qlora")


class Block(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        """An empty YAML key (`lora_r:`) means "not set", as in Axolotl configs."""
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None or k not in cls.model_fields}
        return data


class SpecialTokens(Block):
    """Special tokens to set on the tokenizer (added to the vocabulary when new)."""

    bos_token: str | None = None
    eos_token: str | None = None
    pad_token: str | None = None
    unk_token: str | None = None


class UserDefinedFormat(Block):
    """`type` given as a mapping: an instruction format of your own (Axolotl's user-defined type)."""

    format: str = Field(description="Prompt with {instruction} and {input}, e.g. '[INST] {instruction} {input} [/INST]'.")
    no_input_format: str | None = Field(
        default=None, description="Prompt for rows without an input (default: `format`)."
    )
    field_instruction: str = Field(default="instruction", description="Column with the instruction.")
    field_input: str = Field(default="input", description="Column with the optional input.")
    field_output: str = Field(default="output", description="Column with the trained answer.")
    field_system: str | None = Field(default=None, description="Column with a per-row system prompt.")
    system_prompt: str = Field(default="", description="System prompt for rows without `field_system`.")
    system_format: str = Field(default="{system}", description="How the system prompt is written before the prompt.")


class UserDefinedPreferenceFormat(Block):
    """`type` given as a mapping under `rl:` (Axolotl's user_defined DPO / KTO types): the prompt,
    the chosen and rejected completions (KTO: the completion and its label) from columns of your
    own, through format strings."""

    field_prompt: str = Field(default="prompt", description="Column with the prompt.")
    field_system: str = Field(default="system", description="Column with an optional system prompt ({system}).")
    field_chosen: str = Field(default="chosen", description="rl: dpo/ipo/simpo/orpo: column with the chosen completion.")
    field_rejected: str = Field(default="rejected", description="Column with the rejected completion.")
    field_completion: str = Field(default="completion", description="rl: kto: column with the completion.")
    field_label: str = Field(default="label", description="rl: kto: column saying whether it is desirable (true/false).")
    prompt_format: str = Field(default="{prompt}", description="The prompt, with {prompt} (and {system}).")
    chosen_format: str = Field(default="{chosen}", description="The chosen completion, with {chosen}.")
    rejected_format: str = Field(default="{rejected}", description="The rejected completion, with {rejected}.")
    completion_format: str = Field(default="{completion}", description="rl: kto: the completion, with {completion}.")


def _expected(names: tuple[str, ...]) -> str:
    """Names as pydantic's literal errors list them: 'a', 'b' or 'c'."""
    quoted = [repr(n) for n in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def _dataset_type(name: str) -> str:
    """A `type` name tuner knows. Axolotl's types of other objectives pass here and are refused,
    with the capability named, by DatasetConfig.problems."""
    if name in DATASET_TYPES or dataset_types.unsupported(name) or dataset_types.is_preference_type(name):
        return name
    raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": _expected(MAIN_TYPES)})


def _template_name(name: str) -> str:
    """A `chat_template` name tuner renders with (multimodal ones pass here and are refused with why)."""
    if dataset_types.is_template_name(name) or name in dataset_types.UNSHIPPED_TEMPLATES:
        return name
    raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": _expected(CHAT_TEMPLATES)})


DatasetType = Annotated[str, AfterValidator(_dataset_type)]


def _comma_separated(value: Any) -> Any:
    """LLaMA-Factory writes lists of numbers as one string: "0.7,0.3"."""
    if isinstance(value, str):
        try:
            return [float(v) for v in value.split(",") if v.strip()]
        except ValueError:
            return value  # pydantic names the bad value
    return value


Probabilities = Annotated[list[Annotated[float, Field(ge=0, le=1)]], BeforeValidator(_comma_separated)]
ChatTemplateName = Annotated[str, AfterValidator(_template_name)]

# Dataset keys that only mean something under `rl:`.
PREFERENCE_DATASET_KEYS = ("field_chosen", "field_rejected", "field_completion", "field_label")
# Dataset keys that only mean something for `type: chat_template`.
CHAT_KEYS = (
    "field_messages", "message_property_mappings", "roles", "roles_to_train", "train_on_eos", "message_field_training",
    "train_on_eot", "chat_template", "chat_template_jinja", "drop_system_message", "split_thinking", "field_thinking",
    "template_thinking_key", "message_field_role", "message_field_content", "field_human", "field_model", "conversation",
)


class DatasetConfig(Block):
    """One entry of `datasets` (or `test_datasets`).

    Legacy spellings (ShareGPT types, `message_field_role`, ...) are rewritten to what tuner
    does before validation (load.py calls tuner.config.dataset_types.rewrite_legacy on each
    entry and reports every rewrite as a notice); the legacy keys below are set only when
    they could not be rewritten, and `problems` refuses them saying why."""

    path: str = Field(description="A local file or folder, or a Hugging Face Hub dataset id.")
    type: DatasetType | UserDefinedFormat | UserDefinedPreferenceFormat | None = Field(
        default=None,
        description=(
            "How rows become a prompt and a trained completion: alpaca, completion, chat_template, "
            "input_output, a mapping (user-defined format), or left out for pre-tokenized rows. Axolotl's other "
            "instruction types (alpaca:chat, jeopardy, oasst, context_qa, ...) and legacy ones (sharegpt, ...) too."
        ),
    )
    data_files: str | list[str] | None = Field(
        default=None, description="Files to load from `path` (a folder or hub repo)."
    )
    ds_type: Literal[FILE_TYPES] | None = Field(  # type: ignore[valid-type]
        default=None,
        description="File format of local files; inferred from the extension when left out.",
    )
    split: str = Field(default="train", description="Split to load.")
    name: str | None = Field(default=None, description="Hub dataset configuration name.")
    revision: str | None = Field(
        default=None, description="Hub dataset: the revision (branch, tag or commit) to load; offline, from the local cache."
    )
    field: str | None = Field(
        default=None, description="`completion` only: the text column (default `text`)."
    )
    overlap_len: NonNegInt | None = Field(
        default=None, description="`completion` with excess_length_strategy: split: tokens each piece repeats from the "
        "end of the piece before, as context (not trained again). Axolotl's completion key; default 0."
    )
    weight: Annotated[float, Field(gt=0, le=1)] | None = Field(
        default=None, description="The share of this dataset's rows to train on (0 < weight <= 1): a seeded random "
        "subset of that many rows, as Axolotl's `weight`; counted. Proportions of a mixture: mix_strategy."
    )
    # chat_template only
    field_messages: str = Field(default="messages", description="chat_template: the column holding the messages.")
    message_property_mappings: dict[str, str] | None = Field(
        default=None,
        description="chat_template: message keys to read, e.g. {role: from, content: value} for ShareGPT rows.",
    )
    roles: dict[str, list[str]] | None = Field(
        default=None,
        description="chat_template: role names as written in the data, per role, e.g. {user: [human], assistant: [gpt]}.",
    )
    roles_to_train: list[str] = Field(
        default=["assistant"], description="chat_template: roles whose messages are trained."
    )
    train_on_eos: Literal[TRAIN_ON_EOS] = Field(  # type: ignore[valid-type]
        default="turn",
        description="chat_template: which end-of-turn tokens train: turn (of trained turns), all, last, none.",
    )
    train_on_eot: Literal[TRAIN_ON_EOS] | None = Field(  # type: ignore[valid-type]
        default=None,
        description="chat_template: as train_on_eos, for the `eot_tokens` (default: as train_on_eos); train_on_eos "
        "then covers the EOS token where it is not one of them.",
    )
    message_field_training: str = Field(
        default="training", description="chat_template: a per-message true/false that overrides roles_to_train."
    )
    chat_template: ChatTemplateName | None = Field(
        default=None, description="chat_template: this dataset's template (default: the top-level chat_template)."
    )
    chat_template_jinja: str | None = Field(
        default=None, description="chat_template: a Jinja template of this dataset's own."
    )
    drop_system_message: bool = Field(
        default=False, description="chat_template: leave out a conversation's first message when it is a system one."
    )
    split_thinking: bool = Field(
        default=False,
        description="chat_template: take an assistant's reasoning out of its content (<think>...</think>) and give "
        "it to the template as template_thinking_key.",
    )
    field_thinking: str = Field(
        default="reasoning_content", description="chat_template: the message key holding the message's reasoning."
    )
    template_thinking_key: str = Field(
        default="reasoning_content", description="chat_template: the key the chat template reads reasoning from."
    )
    # preference types (with `rl:`)
    field_chosen: str = Field(
        default="chosen", description="rl: the column with the chosen completion (a string, a message, or a list "
        "ending in it).")
    field_rejected: str = Field(default="rejected", description="rl: the column with the rejected completion.")
    field_completion: str = Field(default="completion", description="rl: kto: the column with the completion.")
    field_label: str = Field(
        default="label", description="rl: kto: the column saying whether the completion is desirable (true/false); "
        "type classification: the column with the label (a class name, an integer id, or a number for regression).")
    field_text: str = Field(default="text", description="type classification: the column with the text to classify.")
    # the config's `rl:`, or "reward" with reward_model: true (TunerConfig sets it): how `type` reads
    _rl: str | None = PrivateAttr(default=None)
    # Legacy keys: rewritten before validation; set here only when they cannot be (refused, naming why).
    conversation: Literal[tuple(dataset_types.CONVERSATIONS)] | None = Field(  # type: ignore[valid-type]
        default=None, exclude=True, description="Legacy (ShareGPT types): the conversation template; write chat_template instead."
    )
    message_field_role: str | None = Field(
        default=None, exclude=True, description="Deprecated: write message_property_mappings: {role: ...}."
    )
    message_field_content: str | None = Field(
        default=None, exclude=True, description="Deprecated: write message_property_mappings: {content: ...}."
    )
    field_human: str | None = Field(default=None, exclude=True, description="Legacy: write roles: {user: [...]}.")
    field_model: str | None = Field(default=None, exclude=True, description="Legacy: write roles: {assistant: [...]}.")

    @property
    def kind(self) -> str:
        """The format that prepares this dataset (a tuner.config.dataset_types.KINDS name): the
        `type` name, 'user_defined' for a mapping, 'pretokenized' when `type` is left out; under
        `rl:` the preference reading of the name (dataset_types.preference_kind)."""
        if self._rl is not None:
            return dataset_types.preference_kind(self.type if isinstance(self.type, str) or self.type is None
                                                 else "user_defined", self._rl)
        if self.type is None:
            return "pretokenized"
        return "user_defined" if isinstance(self.type, (UserDefinedFormat, UserDefinedPreferenceFormat)) else self.type

    def problems(self, path: tuple[Any, ...]) -> list[Problem]:
        """Rules within one dataset entry; `path` is where it sits (("datasets", 0))."""
        out = []
        if (self._rl is not None or dataset_types.is_preference_type(self.type)
                or dataset_types.is_reward_type(self.type) or isinstance(self.type, UserDefinedPreferenceFormat)):
            return self._preference_problems(path) + self._template_problems(path)
        if self.kind == "classification":
            unused = sorted((set(PREFERENCE_DATASET_KEYS) - {"field_label"} | set(CHAT_KEYS) | {"field"})
                            & self.model_fields_set)
            return [Problem(path + (k,), f"{k} does not apply to type classification (it reads field_text and "
                                         "field_label).") for k in unused]
        if "field_text" in self.model_fields_set:
            out.append(Problem(path + ("field_text",), f"field_text applies to type classification only, not {self.kind}."))
        for key in sorted(set(PREFERENCE_DATASET_KEYS) & self.model_fields_set):
            out.append(Problem(path + (key,), f"{key} is a preference-training key: it needs `rl:` (dpo, ipo, simpo, "
                                              "orpo, kto) and a preference dataset type."))
        capability = dataset_types.unsupported(self.kind)
        if capability is not None:
            out.append(Problem(path + ("type",), f"{self.kind!r} is an Axolotl dataset type for {capability}: "
                                                 "not supported yet."))
        if self.field is not None and self.kind != "completion":
            out.append(Problem(path + ("field",), f"`field` applies to type completion only, not {self.kind}."))
        if self.kind != "chat_template":
            for name in sorted(set(CHAT_KEYS) & self.model_fields_set):
                out.append(Problem(path + (name,), f"{name} applies to type chat_template only, not {self.kind}."))
            return out
        for key, new in (("message_field_role", "role"), ("message_field_content", "content")):
            if getattr(self, key) is not None:  # left by rewrite_legacy: it contradicts the mappings
                out.append(Problem(path + (key,), f"{key} is {getattr(self, key)!r} but message_property_mappings."
                                                  f"{new} is {(self.message_property_mappings or {}).get(new)!r}; keep "
                                                  "message_property_mappings (message_field_* is deprecated)."))
        for key in ("conversation", "field_human", "field_model"):
            if getattr(self, key) is not None:
                out.append(Problem(path + (key,), f"{key} is a key of the legacy sharegpt types; with chat_template write "
                                                  + ("chat_template instead." if key == "conversation" else "roles instead.")))
        return out + self._template_problems(path)

    def _template_problems(self, path: tuple[Any, ...]) -> list[Problem]:
        """The dataset's own chat template, if it names one."""
        out = []
        if self.chat_template in dataset_types.UNSHIPPED_TEMPLATES:
            out.append(Problem(path + ("chat_template",), f"{self.chat_template!r} is "
                                                          f"{dataset_types.UNSHIPPED_TEMPLATES[self.chat_template]}: "
                                                          "not supported yet."))
        if self.chat_template == "jinja" and not self.chat_template_jinja:
            out.append(Problem(path + ("chat_template",), "chat_template: jinja needs the template in chat_template_jinja."))
        if self.chat_template_jinja and self.chat_template not in (None, "jinja"):
            out.append(Problem(path + ("chat_template_jinja",), f"chat_template_jinja is set but chat_template is "
                                                                f"{self.chat_template}; remove one."))
        return out


    def _preference_problems(self, path: tuple[Any, ...]) -> list[Problem]:
        """A dataset entry under `rl:` (or one with a preference type and no `rl:`)."""
        name = self.type if isinstance(self.type, str) else None
        if self._rl is None:
            if dataset_types.is_reward_type(name):
                return [Problem(path + ("type",), f"{name!r} is a reward-model dataset type: it needs "
                                                  "`reward_model: true`.")]
            return [Problem(path + ("type",), f"{name!r} is a preference dataset type: it needs `rl:` (dpo, ipo, simpo, "
                                              "orpo, or kto for its unpaired form), or `reward_model: true` to train a "
                                              "reward model on its pairs.")]
        kind = self.kind
        if self._rl == "grpo":
            if kind != dataset_types.GRPO_KIND:
                return [Problem(path + ("type",), f"{name!r} under rl: grpo: GRPO reads prompts only; write type: "
                                                  "chat_template (messages ending in a user turn, field_messages) or "
                                                  "leave type out (a `prompt` string or messages per row).")]
            unused = sorted((set(PREFERENCE_DATASET_KEYS) | {"field_text", "roles_to_train", "train_on_eos",
                                                            "train_on_eot", "message_field_training",
                                                            "message_field_training_detail"}) & self.model_fields_set)
            return [Problem(path + (k,), f"{k} does not apply under rl: grpo (prompts only; completions are sampled).")
                    for k in unused]
        reward = self._rl == "reward"
        allowed = ({f"kto:{n}" for n in dataset_types.KTO_TYPES} | {"user_defined_unpaired"} if self._rl == "kto"
                   else set(dataset_types.PREFERENCE_TYPES) | {"user_defined_pairs"}
                   | (set(dataset_types.REWARD_TYPES) if reward else set()))
        under = "reward_model: true" if reward else f"rl: {self._rl}"
        if kind not in allowed:
            known = dataset_types.KTO_TYPES if self._rl == "kto" else dataset_types.PREFERENCE_TYPES
            known = dataset_types.REWARD_TYPES + known if reward else known
            what = "type left out (pre-tokenized rows)" if self.type is None else repr(name)
            capability = dataset_types.unsupported(name) if name else None
            reason = f"an Axolotl type for {capability}: not supported yet" if capability else \
                "not a preference type tuner reads"
            return [Problem(path + ("type",), f"{what} under {under} is {reason}; types: {', '.join(known)}, "
                                              "or a mapping (user-defined)." + (did_you_mean(name, known) if name else ""))]
        if isinstance(self.type, UserDefinedFormat):
            return [Problem(path + ("type",), "under rl: a user-defined type reads field_prompt / field_chosen / "
                                              "field_rejected (KTO: field_completion / field_label) and prompt_format, "
                                              "not format / field_instruction.")]
        chat = kind.endswith("chat_template.default") or kind in dataset_types.REWARD_TYPES
        unused = sorted((set(CHAT_KEYS) - ({"field_messages", "message_property_mappings", "roles", "chat_template",
                                             "chat_template_jinja"} if chat else set())) & self.model_fields_set)
        unused += sorted({"field_completion", "field_label"} & self.model_fields_set if self._rl != "kto" else
                         {"field_chosen", "field_rejected"} & self.model_fields_set)
        unused += ["field_text"] if "field_text" in self.model_fields_set else []
        return [Problem(path + (k,), f"{k} does not apply to type {name or 'user-defined'} under {under}.")
                for k in unused]


class QuantizationKwargs(Block):
    """`model_quantization_config_kwargs`: transformers' Mxfp4Config options."""

    dequantize: bool = Field(default=False, description="Load the quantized weights dequantized (to train them).")
    modules_to_not_convert: list[str] | None = Field(default=None, description="Modules stored unquantized.")


class ModelBlock(Block):
    """Which model and tokenizer to load, and how."""

    base_model: str = Field(
        description=(
            "Hub id (from the local cache when offline), a local HF folder, a `.gguf` file, "
            "or `pkg:PACKAGE/FILE` for a file shipped inside an installed Python package."
        )
    )
    base_model_config: str | None = Field(
        default=None, description="Where to read config.json from, if not `base_model`."
    )
    model_type: str | None = Field(
        default=None,
        description="transformers model class by name: a causal LM (e.g. LlamaForCausalLM) or a sequence classifier "
        "(AutoModelForSequenceClassification, e.g. LlamaForSequenceClassification). Default: AutoModelForCausalLM; "
        "AutoModelForSequenceClassification for reward_model and classification (or the class the checkpoint was "
        "saved with, config.json's architectures).",
    )
    reward_model: bool = Field(
        default=False,
        description="Train a reward model (Bradley-Terry) on preference pairs: a sequence-classification head with "
        "num_labels 1 (on a causal-LM checkpoint the score head is new: trained and saved), loss "
        "-log sigmoid(r_chosen - r_rejected). Datasets: bradley_terry.chat_template or the rl: pair types.",
    )
    num_labels: PositiveInt | None = Field(
        default=None,
        description="Sequence classification: the number of classes (1: regression with MSE). Default: the size of "
        "id2label / label2id, else the checkpoint's own head, else the labels in the training data. Reward models: 1.",
    )
    id2label: dict[NonNegInt, str] | None = Field(
        default=None,
        description="Sequence classification: class names by id, e.g. {0: negative, 1: positive} (saved in config.json; "
        "default: the names in the training data, sorted, or LABEL_0... for integer labels).",
    )
    label2id: dict[str, NonNegInt] | None = Field(
        default=None, description="Sequence classification: class ids by name (the inverse of id2label; give either)."
    )
    tokenizer_type: str | None = Field(
        default=None,
        description="transformers tokenizer class by name; default AutoTokenizer.",
    )
    tokenizer_config: str | None = Field(
        default=None, description="Where to load the tokenizer from, if not `base_model`."
    )
    tokenizer_use_fast: bool = Field(default=True, description="Use the fast (Rust) tokenizer.")
    tokenizer_legacy: bool | None = Field(
        default=None,
        description="`legacy=` for tokenizers that take it (Llama / T5-style sentencepiece ones): true adds a word-start "
        "marker after special tokens (the old behaviour). Default: the tokenizer's own setting.",
    )
    tokenizer_use_mistral_common: bool = Field(
        default=False,
        description="Load the model's tekken.json / tokenizer.model.vN through mistral-common (Mistral's own "
        "tokenizer; pip install 'tuner[mistral]'): chat_template datasets are encoded by mistral-common's request "
        "encoder (no Jinja template), other types by its plain encode. As Axolotl's key.",
    )
    revision_of_model: str | None = Field(
        default=None,
        description="The hub revision of base_model: a branch, tag or commit (a short commit too); offline, the "
        "snapshot of that revision in the local hub cache. Axolotl's model_revision is read as this.",
    )
    base_model_ignore_patterns: list[str] | str | None = Field(
        default=None,
        description="Hub base_model: file patterns not to download (e.g. 'pytorch*'; tuner fetches only config, "
        "tokenizer and safetensors files anyway).",
    )
    trust_remote_code: bool = Field(
        default=False,
        description="Allow running Python code shipped with a model repo. Off unless you trust it.",
    )
    special_tokens: SpecialTokens | None = Field(
        default=None, description="bos/eos/pad/unk tokens to set (added when new)."
    )
    tokens: list[str] | None = Field(
        default=None, description="Extra tokens to add to the vocabulary."
    )
    attn_implementation: Literal[ATTN_IMPLEMENTATIONS] = Field(  # type: ignore[valid-type]
        default="sdpa",
        description="Attention kernel: sdpa (default), eager, flash_attention_2 / flash_attention_3 (CUDA, with "
        "flash-attn installed; sdpa otherwise, reported), or flex_attention. Axolotl's other backends run as sdpa, reported.",
    )
    model_quantization_config: Literal["Mxfp4Config"] | None = Field(
        default=None,
        description="A base model stored quantized by transformers: Mxfp4Config (gpt-oss' MXFP4 experts), with "
        "model_quantization_config_kwargs: {dequantize: true}: the weights load dequantized into the load dtype and "
        "train as ordinary weights.",
    )
    model_quantization_config_kwargs: QuantizationKwargs | None = Field(
        default=None, description="Options of model_quantization_config: {dequantize: true} (needed to train)."
    )


class PretrainingDataset(Block):
    """One entry of `pretraining_dataset` (Axolotl's keys): a corpus streamed, tokenized and packed
    while training runs."""

    path: str = Field(description="A local file (.jsonl/.json/.parquet/.csv/.txt), a folder of such shards, or a "
                      "Hugging Face Hub dataset id.")
    name: str | None = Field(default=None, description="Hub dataset configuration name.")
    split: str = Field(default="train", description="Hub dataset split to stream.")
    text_column: str = Field(default="text", description="The column holding each document's text.")
    data_files: str | list[str] | None = Field(
        default=None, description="Files (glob patterns) of `path` to stream: in a local folder, or in a Hub repo.")
    skip: NonNegInt | None = Field(default=None, description="Rows to skip at the start of the corpus.")
    type: Literal["pretrain"] | None = Field(default=None, description="Axolotl's `type: pretrain` (the only kind).")
    trust_remote_code: bool = Field(default=False, description="Hub datasets with a loading script of their own.")


class DataBlock(Block):
    """Which data to train on and how it becomes `input_ids` / `labels`."""

    datasets: list[DatasetConfig] = Field(
        default_factory=list, description="Training datasets (required unless pretraining_dataset streams a corpus).")
    pretraining_dataset: list[PretrainingDataset] | None = Field(
        default=None, description="A corpus streamed through datasets' streaming mode, tokenized on the fly and "
        "packed into full sequence_len rows, for continued pre-training (Axolotl's key; needs max_steps). The "
        "stream position is checkpointed: a resumed run continues on the same tokens."
    )
    dataset_prepared_path: str = Field(
        default="last_run_prepared",
        description="Folder for prepared (tokenized) datasets, one subfolder per fingerprint.",
    )
    dataset_num_proc: PositiveInt | None = Field(
        default=None, description="Processes used to tokenize; default: the CPU cores this process may use "
        "(a source is split only where each process gets at least 1,000 rows)."
    )
    val_set_size: Annotated[float, Field(ge=0)] = Field(
        default=0.0,
        description="Held-out rows for evaluation: a fraction (< 1) or a row count (>= 1).",
    )
    sequence_len: Annotated[int, Field(ge=2)] = Field(
        default=512, description="Maximum tokens per row."
    )
    excess_length_strategy: Literal["drop", "truncate", "raise", "split"] = Field(
        default="drop", description="What to do with rows longer than `sequence_len`: drop them, truncate them, raise, "
        "or split them (type completion only: pieces of sequence_len tokens, each a document of its own; a dataset's "
        "overlap_len repeats that many tokens of the piece before as untrained context)."
    )
    min_sample_len: PositiveInt | None = Field(
        default=None, description="Drop (and count) rows of fewer tokens than this, before any truncation (Axolotl's)."
    )
    train_on_inputs: bool = Field(
        default=False, description="Train on prompt tokens too (not only the completion)."
    )
    test_datasets: list[DatasetConfig] | None = Field(
        default=None, description="An explicit evaluation set (instead of holding out val_set_size rows)."
    )
    chat_template: ChatTemplateName | None = Field(
        default=None,
        description="Template for chat_template datasets: tokenizer_default (the tokenizer's own), a named one "
        "(chatml, llama3, gemma3, qwen3, ...; tuner ships each), tokenizer_default_fallback_NAME, or jinja (with "
        "chat_template_jinja).",
    )
    chat_template_jinja: str | None = Field(
        default=None, description="A Jinja chat template of your own (implies chat_template: jinja)."
    )
    sample_packing: bool = Field(
        default=False,
        description="Pack several rows into each sequence_len row (no cross-attention between them, no padding).",
    )
    eval_sample_packing: bool | None = Field(
        default=None, description="Pack evaluation rows too (default: as sample_packing)."
    )
    batch_flattening: bool = Field(
        default=False,
        description="Without packing: put each micro-batch's rows end to end in one row (restarting "
        "position_ids, no padding, no cross-attention) instead of padding them to the longest.",
    )
    pad_to_sequence_len: bool = Field(
        default=False, description="Pad every batch to sequence_len (default: to its longest row)."
    )
    pad_to_multiple_of: PositiveInt | None = Field(
        default=None, description="Round each batch's padded length up to a multiple of this."
    )
    shuffle_merged_datasets: bool = Field(
        default=True, description="Shuffle the training rows each epoch (seed + epoch); false: train them in the "
        "order of `datasets` (and of each file), packing bins in that order too."
    )
    mix_strategy: Literal["concat", "interleave_under", "interleave_over"] = Field(
        default="concat", description="How `datasets` are merged (LLaMA-Factory's): concat (all rows of each), "
        "interleave_under (rows drawn from the datasets in proportion to interleave_probs until one runs out) or "
        "interleave_over (until every dataset has been used once; the smaller ones repeat)."
    )
    interleave_probs: Probabilities | None = Field(
        default=None, description="With mix_strategy: interleave_*: the probability of each dataset (one per entry "
        "of `datasets`, summing to 1; default: equal). LLaMA-Factory's \"0.7,0.3\" is read too."
    )
    dataset_exact_deduplication: bool | None = Field(
        default=None,
        description="Drop prepared rows that repeat an earlier one exactly (all token ids and labels), before the "
        "evaluation split (Axolotl's); counted.",
    )
    skip_invalid_rows: bool = Field(
        default=False,
        description="Drop and count rows that are invalid (bad JSON, missing or empty fields) instead of stopping.",
    )
    eot_tokens: list[str] | None = Field(
        default=None,
        description="chat_template: the tokens that end a turn (e.g. [<|im_end|>]); default: the tokenizer's EOS.",
    )


class FSDPConfig(Block):
    """`fsdp_config`: how FSDP shards the model (Axolotl 0.19's keys)."""

    fsdp_version: Literal[1, 2] = Field(default=2, description="FSDP generation (2: per-parameter sharding).")
    reshard_after_forward: bool = Field(default=True, description="Free gathered weights after forward (FULL_SHARD).")
    offload_params: bool = Field(default=False, description="Keep sharded parameters in CPU memory.")
    state_dict_type: Literal["FULL_STATE_DICT", "SHARDED_STATE_DICT"] = Field(
        default="FULL_STATE_DICT", description="How checkpoints hold the weights."
    )
    auto_wrap_policy: Literal["TRANSFORMER_BASED_WRAP", "SIZE_BASED_WRAP"] = Field(
        default="TRANSFORMER_BASED_WRAP", description="What becomes its own FSDP unit."
    )
    transformer_layer_cls_to_wrap: str | None = Field(
        default=None, description="Decoder layer class to wrap (default: the model's own, e.g. LlamaDecoderLayer)."
    )
    min_num_params: PositiveInt | None = Field(default=None, description="SIZE_BASED_WRAP: parameters per unit.")
    cpu_ram_efficient_loading: bool = Field(default=False, description="Load weights on rank 0 only.")
    activation_checkpointing: bool = Field(default=False, description="FSDP's own activation checkpointing.")


class GradientCheckpointingKwargs(Block):
    """`gradient_checkpointing_kwargs`: how activations are recomputed (torch.utils.checkpoint)."""

    use_reentrant: bool = Field(
        default=False,
        description="The reentrant implementation (needs input gradients; not with unfrozen_parameters). "
        "Default: non-reentrant, which also works with frozen inputs.",
    )


class TrainingBlock(Block):
    """The optimisation: steps, batch, optimizer, schedule, precision, logging."""

    output_dir: str = Field(default="./model-out", description="Where the trained model goes.")
    micro_batch_size: PositiveInt = Field(default=1, description="Rows per forward pass.")
    gradient_accumulation_steps: PositiveInt = Field(
        default=1, description="Micro-batches per optimizer step."
    )
    num_epochs: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="Passes over the training data (may be fractional)."
    )
    max_steps: PositiveInt | None = Field(
        default=None, description="Optimizer steps; wins over `num_epochs` when both are set."
    )
    learning_rate: Annotated[float, Field(gt=0)] = Field(description="Peak learning rate.")
    optimizer: Literal[OPTIMIZERS] = Field(  # type: ignore[valid-type]
        default="adamw_torch_fused",
        description="Optimizer, by its HF Trainer / Axolotl name: torch AdamW (adamw_torch[_fused]); bitsandbytes "
        "8-bit and paged AdamW, Lion, AdEMAMix, RMSprop (adamw_bnb_8bit, paged_adamw_8bit, lion_8bit, ...; CPU too, "
        "where paging is off); adafactor; sgd; adagrad; rmsprop. adamw_torch_8bit/4bit run as bitsandbytes' "
        "8-bit AdamW (reported).",
    )
    lr_scheduler: Literal[SCHEDULERS] = Field(  # type: ignore[valid-type]
        default="cosine", description="Learning-rate schedule after warmup."
    )
    lr_quadratic_warmup: bool | None = Field(
        default=None, description="lr_scheduler: cosine: warm up along (step / warmup)^2 instead of linearly (Axolotl's)."
    )
    cosine_min_lr_ratio: Annotated[float, Field(ge=0, le=1)] | None = Field(
        default=None, description="lr_scheduler: cosine: decay to this fraction of learning_rate instead of 0 (Axolotl's)."
    )
    cosine_constant_lr_ratio: Annotated[float, Field(ge=0, le=1)] | None = Field(
        default=None,
        description="lr_scheduler: cosine, with cosine_min_lr_ratio: the cosine reaches its floor at this fraction of "
        "all steps and stays there (Axolotl's).",
    )
    warmup_steps: NonNegInt | None = Field(
        default=None, description="Linear warmup steps; default: warmup_ratio, else 3% of the steps (at most 100)."
    )
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] | None = Field(
        default=None, description="Warmup as a fraction of all steps."
    )
    weight_decay: Annotated[float, Field(ge=0)] = Field(default=0.0, description="AdamW weight decay.")
    adam_beta1: Annotated[float, Field(ge=0, lt=1)] = Field(
        default=0.9, description="Adam's beta1 (also Lion's and AdEMAMix's first beta)."
    )
    adam_beta2: Annotated[float, Field(ge=0, lt=1)] = Field(
        default=0.999, description="Adam's beta2 (also Lion's and AdEMAMix's second beta)."
    )
    adam_epsilon: Annotated[float, Field(gt=0)] = Field(default=1e-8, description="Adam's epsilon.")
    max_grad_norm: Annotated[float, Field(ge=0)] | None = Field(
        default=1.0, description="Gradient clipping norm; null or 0 turns clipping off."
    )
    bf16: Precision = Field(
        default=False,
        description="bf16 mixed precision: true, false, or auto (on when the device runs bf16 fast).",
    )
    fp16: Precision = Field(default=False, description="fp16 mixed precision (CUDA only).")
    tf32: Precision = Field(
        default="auto",
        description="TF32 matmuls for fp32 work on CUDA GPUs (Ampere and newer): true, false, or auto (on where "
        "the GPU has it). No effect on CPUs.",
    )
    gradient_checkpointing: bool = Field(
        default=False, description="Recompute activations in backward to save memory."
    )
    gradient_checkpointing_kwargs: GradientCheckpointingKwargs | None = Field(
        default=None, description="With gradient_checkpointing: {use_reentrant: false} (the default) or true."
    )
    torch_compile: bool = Field(
        default=False,
        description="Compile each decoder layer with torch.compile (one graph shared by all layers); "
        "the first steps compile.",
    )
    fsdp: list[Literal["full_shard", "shard_grad_op", "hybrid_shard", "offload", "auto_wrap"]] | None = Field(
        default=None, description="Train with FSDP (CUDA GPUs), e.g. [full_shard, auto_wrap]; details in fsdp_config."
    )
    fsdp_config: FSDPConfig | None = Field(default=None, description="FSDP settings (see FSDPConfig).")
    dp_shard_size: PositiveInt | None = Field(
        default=None,
        description="With fsdp: how many processes share one copy of the model (Axolotl's). tuner shards across "
        "all processes, so train checks it equals their number (sharding within groups, HSDP, is not supported yet).",
    )
    deepspeed: str | dict[str, Any] | None = Field(
        default=None, description="Train with DeepSpeed (CUDA GPUs): a JSON config file or the config inline."
    )
    logging_steps: PositiveInt = Field(default=1, description="Log every N optimizer steps.")
    use_tensorboard: bool = Field(default=False, description="Also log to TensorBoard (output_dir/tensorboard).")
    wandb_project: str | None = Field(default=None, description="Also log to this Weights & Biases project.")
    wandb_entity: str | None = Field(default=None, description="W&B team or user.")
    wandb_name: str | None = Field(default=None, description="W&B run name.")
    wandb_mode: Literal["online", "offline", "disabled"] = Field(
        default="online", description="W&B mode; offline writes the run under output_dir/wandb without a network."
    )
    use_mlflow: bool = Field(default=False, description="Also log to MLflow.")
    mlflow_tracking_uri: str | None = Field(
        default=None, description="MLflow tracking URI (default: a local file store in output_dir/mlruns)."
    )
    mlflow_experiment_name: str | None = Field(default=None, description="MLflow experiment (default: tuner).")
    mlflow_run_name: str | None = Field(default=None, description="MLflow run name.")
    eval_steps: PositiveInt | Annotated[float, Field(gt=0, lt=1)] | None = Field(
        default=None,
        description="Evaluate every N steps (or a fraction of all steps); default: each epoch. Needs val_set_size.",
    )
    evals_per_epoch: NonNegInt | None = Field(
        default=None,
        description="Evaluate N times per epoch, evenly spaced (instead of eval_steps); 0 or empty: once per epoch.",
    )
    early_stopping_patience: PositiveInt | None = Field(
        default=None,
        description="End training (saving the model as at a normal end) once eval_loss has not beaten its best for "
        "N evaluations in a row (HF Trainer's EarlyStoppingCallback). The saved model is the last step's.",
    )
    save_steps: PositiveInt | Annotated[float, Field(gt=0, lt=1)] | None = Field(
        default=None, description="Checkpoint every N steps (or a fraction of all steps); default: each epoch."
    )
    saves_per_epoch: NonNegInt | None = Field(
        default=None,
        description="Checkpoint N times per epoch, evenly spaced (instead of save_steps); 0 or empty: once per epoch.",
    )
    save_total_limit: PositiveInt | None = Field(
        default=None, description="Keep only the newest N checkpoints."
    )
    resume_from_checkpoint: str | None = Field(
        default=None,
        description="A checkpoint folder to resume from, or `auto` for the newest complete one in output_dir.",
    )
    overwrite_output_dir: bool = Field(
        default=False, description="Replace a finished (or abandoned) run in output_dir instead of refusing."
    )
    seed: int = Field(default=42, description="Seed for shuffling, dropout and initialisation.")
    nan_policy: Literal["stop", "skip"] = Field(
        default="stop",
        description="On a non-finite loss: stop (naming the last good checkpoint) or skip the update and count it.",
    )

    def save_interval(self, steps_per_epoch: int, total_steps: int) -> int | None:
        """Optimizer steps between checkpoints (`saves_per_epoch` or `save_steps`); None: each epoch's end."""
        if self.saves_per_epoch:
            return max(1, math.ceil(steps_per_epoch / self.saves_per_epoch))
        return _interval(self.save_steps, total_steps)

    def eval_interval(self, steps_per_epoch: int, total_steps: int) -> int | None:
        """Optimizer steps between evaluations (`evals_per_epoch` or `eval_steps`); None: each epoch's end."""
        if self.evals_per_epoch:
            return max(1, math.ceil(steps_per_epoch / self.evals_per_epoch))
        return _interval(self.eval_steps, total_steps)


def _interval(value: int | float | None, total_steps: int) -> int | None:
    """A step count, or a fraction (< 1) of all steps."""
    if value is None:
        return None
    return max(1, round(value * total_steps)) if isinstance(value, float) else int(value)


class AdapterBlock(Block):
    """How the model trains: LoRA / QLoRA adapters through peft, or full fine-tuning
    (optionally of `unfrozen_parameters` only)."""

    adapter: Literal[ADAPTERS] | None = Field(  # type: ignore[valid-type]
        default=None, description="`lora`, `qlora` (LoRA on a 4-bit base), or leave out for full fine-tuning."
    )
    load_in_4bit: bool = Field(default=False, description="Load the base weights in 4 bit (bitsandbytes); with adapter: qlora.")
    load_in_8bit: bool = Field(default=False, description="Load the base weights in 8 bit (bitsandbytes); with adapter: lora.")
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = Field(default="nf4", description="4-bit data type.")
    bnb_4bit_use_double_quant: bool = Field(default=True, description="Quantize the 4-bit scales too.")
    lora_r: PositiveInt = Field(default=8, description="LoRA rank.")
    lora_alpha: Annotated[float, Field(gt=0)] = Field(default=16, description="LoRA alpha (scale = alpha / r).")
    lora_dropout: Annotated[float, Field(ge=0, lt=1)] = Field(default=0.0, description="LoRA dropout.")
    lora_target_modules: list[str] | str | None = Field(
        default=None,
        description="Module names to adapt (a list), or one regex matched against full module names.",
    )
    lora_target_linear: bool | None = Field(
        default=None, description="Adapt every linear layer except the output head."
    )
    lora_target_parameters: list[str] | None = Field(
        default=None,
        description="Parameters to adapt directly (peft's target_parameters), by name or name suffix, e.g. "
        "[mlp.experts.gate_up_proj, mlp.experts.down_proj]: MoE experts stored as 3-D tensors, not nn.Linear. "
        "Needs lora_dropout: 0 and no DoRA.",
    )
    lora_modules_to_save: list[str] | None = Field(
        default=None, description="Modules trained in full and saved with the adapter (e.g. [embed_tokens, lm_head])."
    )
    peft_use_dora: bool = Field(default=False, description="DoRA (weight-decomposed LoRA).")
    peft_use_rslora: bool = Field(default=False, description="rsLoRA scaling (alpha / sqrt(r)).")
    peft_trainable_token_indices: list[int] | dict[str, list[int]] | None = Field(
        default=None,
        description="Token ids whose embedding rows train (peft trainable tokens), e.g. the ids of added tokens.",
    )
    lora_model_dir: str | None = Field(
        default=None, description="An existing adapter to continue training (instead of fresh LoRA weights)."
    )
    unfrozen_parameters: list[str] | None = Field(
        default=None,
        description="Regexes of parameter names that train; all others stay frozen. With an adapter, as in "
        "Axolotl: applied to the adapted model's names (base_model.model....), LoRA weights included.",
    )


RL_METHODS = ("dpo", "ipo", "simpo", "orpo", "kto", "grpo")
PAIRED_METHODS = ("dpo", "ipo", "simpo", "orpo")
# TRL 1.16's GRPO loss aggregations that tuner trains (grpo_trainer._compute_loss)
GRPO_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")


class TRLBlock(Block):
    """`trl:` settings as Axolotl writes them (only those tuner's objectives read). The GRPO keys
    (rl: grpo) default to TRL 1.16's GRPOConfig values."""

    beta: Annotated[float, Field(ge=0)] | None = Field(
        default=None, description="The same as rl_beta (Axolotl accepts both; they must agree). rl: grpo: the KL "
        "coefficient (default 0.0, as TRL: no reference model is used)."
    )
    num_generations: Annotated[int, Field(ge=2)] | None = Field(
        default=None, description="rl: grpo: completions sampled per prompt, one group (default 8, as TRL). "
        "micro_batch_size counts completions: micro_batch_size * gradient_accumulation_steps must be a multiple of it.")
    max_completion_length: PositiveInt | None = Field(
        default=None, description="rl: grpo: the most tokens a completion may have (default 512, as TRL).")
    temperature: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="rl: grpo: sampling temperature (default 1.0); the training log-probs use it too, as TRL.")
    top_p: Annotated[float, Field(gt=0, le=1)] | None = Field(default=None, description="rl: grpo: nucleus sampling (default 1.0).")
    top_k: Annotated[int, Field(ge=0)] | None = Field(default=None, description="rl: grpo: top-k sampling (default 0: off).")
    min_p: Annotated[float, Field(ge=0, le=1)] | None = Field(default=None, description="rl: grpo: min-p sampling (default off).")
    repetition_penalty: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="rl: grpo: generation's repetition penalty (default 1.0: none).")
    epsilon: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="rl: grpo: the ratio's lower clipping bound is 1 - epsilon (default 0.2).")
    epsilon_high: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="rl: grpo: the upper clipping bound is 1 + epsilon_high (default: epsilon; DAPO: 0.28).")
    loss_type: str | None = Field(
        default=None, description="rl: grpo: how token losses are aggregated: grpo, bnpo, dr_grpo or dapo (default "
        "dapo, as TRL 1.16); normalised over the whole optimizer step.")
    scale_rewards: bool | Literal["group", "batch", "none"] | None = Field(
        default=None, description="rl: grpo: divide advantages by the rewards' standard deviation within each group "
        "(group or true, the default), over the step's batch (batch), or not (none or false).")
    num_iterations: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="rl: grpo: optimizer steps per generation batch (mu, default 1): each sampled "
        "batch trains this many steps in a row, against the log-probs it was sampled with (clipped ratio); an epoch "
        "has this many times the steps.")
    mask_truncated_completions: bool = Field(
        default=False, description="rl: grpo: completions cut at max_completion_length do not train (DAPO).")
    use_bias_correction_kl: bool | None = Field(
        default=None, description="rl: grpo: multiply the KL term by the (differentiable) ratio, TRL 1.16's default "
        "(true): the unbiased reverse-KL gradient; false: the plain k3 gradient.")
    reward_funcs: list[str] | None = Field(
        default=None, description="rl: grpo: reward functions by dotted path (module.function), the user's own code, "
        "found next to the config file or on PYTHONPATH: f(prompts, completions, **columns) -> list of numbers; or "
        "reward models by folder path (./rm, a/b: a sequence classifier with one output, e.g. one trained with "
        "reward_model: true), found next to the config file first; it scores prompt + completion, as TRL.")
    reward_model_path: str | None = Field(
        default=None, description="rl: grpo: a reward model folder (one trained with reward_model: true, or any "
        "sequence classifier with one output), found next to the config file first: one more reward after "
        "reward_funcs (reward_weights counts it last).")
    reward_weights: list[float] | None = Field(
        default=None, description="rl: grpo: one weight per reward (reward_funcs, then reward_model_path; default 1 "
        "each).")
    log_completions: bool | None = Field(
        default=None, description="rl: grpo: tuner always writes sampled completions to output_dir/samples.jsonl.")
    num_completions_to_print: PositiveInt | None = Field(
        default=None, description="rl: grpo: completions written to samples.jsonl per logging step (default 4).")
    use_vllm: bool = Field(default=False, description="rl: grpo: generation with vLLM (not supported: tuner "
                                                      "generates with transformers, KV cache on).")


class PreferenceBlock(Block):
    """Preference training (`rl:`): DPO and its loss types, IPO, SimPO, ORPO, KTO. Axolotl's
    keys; each method's own keys are refused with another method."""

    rl: Literal[RL_METHODS] | None = Field(  # type: ignore[valid-type]
        default=None,
        description="Train on preferences instead of SFT: dpo, ipo, simpo (CPO-SimPO), orpo or kto; or online RL "
        "with reward functions: grpo.",
    )
    rl_beta: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="beta: the strength of the preference (default 0.1; ORPO: orpo_alpha)."
    )
    dpo_loss_type: list[str] | None = Field(
        default=None,
        description="rl: dpo: TRL's loss types, e.g. [sigmoid] (default), [hinge], [ipo], [sigmoid, sft] (RPO).",
    )
    dpo_loss_weights: list[Annotated[float, Field(ge=0)]] | None = Field(
        default=None, description="rl: dpo: one weight per dpo_loss_type entry (default 1 each)."
    )
    dpo_label_smoothing: Annotated[float, Field(ge=0, lt=0.5)] | None = Field(
        default=None,
        description="rl: dpo: the probability that a pair's preference is flipped: conservative DPO (cDPO) with "
        "sigmoid, or the noise rate of robust / exo_pair / aot.",
    )
    rpo_alpha: Annotated[float, Field(ge=0)] | None = Field(
        default=None, description="rl: dpo: weight of an NLL term on the chosen completions (RPO)."
    )
    simpo_gamma: float | None = Field(default=None, description="rl: simpo: the target reward margin (default 0.5).")
    cpo_alpha: Annotated[float, Field(ge=0)] | None = Field(
        default=None,
        description="rl: simpo: weight of the NLL term on chosen completions (default 1.0, as TRL; 0 is the paper's SimPO).",
    )
    orpo_alpha: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="rl: orpo: lambda, the weight of the odds-ratio term (default 0.1)."
    )
    kto_desirable_weight: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="rl: kto: weight of desirable examples' losses (default 1.0)."
    )
    kto_undesirable_weight: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="rl: kto: weight of undesirable examples' losses (default 1.0)."
    )
    precompute_ref_log_probs: bool = Field(
        default=False,
        description="rl: dpo/ipo/kto: compute the reference model's log-probs once before training and free it.",
    )
    max_prompt_len: PositiveInt | None = Field(
        default=None,
        description="With excess_length_strategy: truncate, prompts are cut to their last max_prompt_len tokens "
        "first, then completions (default: half of sequence_len).",
    )
    trl: TRLBlock | None = Field(default=None, description="Axolotl's `trl:` settings (beta; rl: grpo's keys).")
    center_rewards_coefficient: Annotated[float, Field(ge=0)] | None = Field(
        default=None,
        description="reward_model: the weight of TRL's centering term, coefficient * mean((r_chosen + r_rejected)^2), "
        "which pulls rewards towards mean zero.",
    )

    @property
    def beta(self) -> float:
        """The method's beta: rl_beta (or trl.beta); ORPO's is orpo_alpha; default 0.1 (GRPO: 0.0)."""
        if self.rl == "orpo" and self.orpo_alpha is not None:
            return self.orpo_alpha
        if self.rl == "grpo" and self.rl_beta is None and (self.trl is None or self.trl.beta is None):
            return 0.0  # TRL 1.16's GRPO default: no KL term, no reference
        if self.rl_beta is not None:
            return self.rl_beta
        if self.trl is not None and self.trl.beta is not None:
            return self.trl.beta
        return 0.1


BLOCKS: dict[str, type[Block]] = {
    "model": ModelBlock,
    "data": DataBlock,
    "training": TrainingBlock,
    "adapter": AdapterBlock,
    "preference": PreferenceBlock,
}


class TunerConfig(BaseModel):
    """The whole validated config: the typed blocks every stage receives."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: ModelBlock
    data: DataBlock
    training: TrainingBlock
    adapter: AdapterBlock
    preference: PreferenceBlock = Field(default_factory=PreferenceBlock)
    # What validation accepted but reports: renamed keys, keys not applied, warnings (not part of the dump).
    _notices: tuple[Notice, ...] = PrivateAttr(default=())
    # The folder of the config file (load_config sets it): where rl: grpo's reward modules are looked up first.
    _config_dir: str | None = PrivateAttr(default=None)

    @property
    def notices(self) -> tuple[Notice, ...]:
        return self._notices

    @property
    def config_dir(self) -> str | None:
        return self._config_dir

    @model_validator(mode="after")
    def _datasets_read_as_rl(self) -> TunerConfig:
        """Under `rl:` (or reward_model: true) every dataset entry reads its `type` as a preference type
        (DatasetConfig.kind)."""
        for ds in [*self.data.datasets, *(self.data.test_datasets or [])]:
            ds._rl = self.preference.rl or ("reward" if self.model.reward_model else None)
        return self

    @property
    def objective(self) -> str:
        """What this config trains: "sft", an `rl:` method, "reward" (reward_model: true) or
        "classification" (a sequence-classification model_type, num_labels / id2label / label2id, or
        datasets of type classification). The head follows: a causal LM for SFT and rl:, a
        sequence classifier for the other two."""
        m = self.model
        if m.reward_model:
            return "reward"
        if self.preference.rl:
            return self.preference.rl
        entries = [*self.data.datasets, *(self.data.test_datasets or [])]
        if ((m.model_type is not None and is_sequence_classifier(m.model_type)) or m.num_labels is not None
                or m.id2label or m.label2id or any(ds.type in dataset_types.CLASSIFICATION_TYPES for ds in entries)):
            return "classification"
        return "sft"

    def __eq__(self, other: object) -> bool:
        """Equal when the blocks are (notices name YAML lines, which a dump moves)."""
        return isinstance(other, TunerConfig) and all(getattr(self, n) == getattr(other, n) for n in BLOCKS)

    def block_values(self, name: str) -> dict[str, Any]:
        """One block's resolved values (defaults filled); LoRA keys only when there is an adapter."""
        values = getattr(self, name).model_dump(mode="json")
        if name == "adapter" and self.adapter.adapter is None:
            values = {"adapter": None, "unfrozen_parameters": values["unfrozen_parameters"]}
        if name == "preference" and self.preference.rl is None:
            center = self.preference.center_rewards_coefficient
            values = {"rl": None, **({"center_rewards_coefficient": center} if center is not None else {})}
        if name == "data":
            for key in ("datasets", "test_datasets"):
                for entry, ds in zip(values.get(key) or [], getattr(self.data, key) or []):
                    chat = ds.kind in ("chat_template", dataset_types.GRPO_KIND) or ds.kind.endswith("chat_template.default")
                    for chat_key in CHAT_KEYS if not chat else ():
                        entry.pop(chat_key, None)
                    for pref_key in PREFERENCE_DATASET_KEYS if ds._rl is None else ():
                        if not (pref_key == "field_label" and ds.kind == "classification"):
                            entry.pop(pref_key, None)
                    if ds.kind != "classification":
                        entry.pop("field_text", None)
        return values

    def to_flat(self) -> dict[str, Any]:
        """The resolved config as a flat, Axolotl-style mapping."""
        flat: dict[str, Any] = {}
        for name in BLOCKS:
            flat.update(self.block_values(name))
        return flat


def block_of(key: str) -> str | None:
    """Which block a top-level YAML key belongs to."""
    for name, block in BLOCKS.items():
        if key in block.model_fields:
            return name
    return None


@dataclass(frozen=True)
class Problem:
    """A user error tied to a key path in the YAML."""

    path: tuple[str | int, ...]
    message: str


@dataclass(frozen=True)
class Notice:
    """Something validation accepted and reports once at start: a renamed or legacy key (`renamed`),
    a key whose effect tuner does not apply here (`not applied`), or a `warning`."""

    key: str  # the key path as written, with its line: "tf32 (line 12)"
    kind: Literal["renamed", "not applied", "warning"]
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


def check_rules(cfg: TunerConfig) -> list[Problem]:
    """Rules that involve more than one key, one function per block or concern. Each problem
    names the key it is about."""
    return [
        *_precision_problems(cfg.training),
        *_length_problems(cfg.training),
        *_cadence_problems(cfg),
        *_adapter_problems(cfg.adapter, cfg.training),
        *_quantization_problems(cfg.adapter, cfg.model),
        *_engine_problems(cfg.training),
        *_batch_problems(cfg.data),
        *_eval_problems(cfg),
        *_chat_template_problems(cfg.data),
        *_dataset_problems(cfg.data),
        *_split_problems(cfg),
        *_mixture_problems(cfg.data),
        *_stream_problems(cfg),
        *_preference_problems(cfg),
        *_grpo_problems(cfg),
        *_head_problems(cfg),
    ]


def _precision_problems(t: TrainingBlock) -> list[Problem]:
    if t.bf16 is True and t.fp16 is True:
        return [Problem(("fp16",), "fp16 and bf16 are both true; pick one (bf16 on CPU and recent GPUs).")]
    return []


def _length_problems(t: TrainingBlock) -> list[Problem]:
    problems = []
    if t.max_steps is None and t.num_epochs is None:
        problems.append(
            Problem(("num_epochs",), "neither num_epochs nor max_steps is set; set one, e.g. `num_epochs: 1`.")
        )
    if t.warmup_steps is not None and t.warmup_ratio is not None:
        problems.append(Problem(("warmup_ratio",), "warmup_steps and warmup_ratio are both set; keep one."))
    return problems


def _cadence_problems(cfg: TunerConfig) -> list[Problem]:
    """save_steps / saves_per_epoch and eval_steps / evals_per_epoch: one of each pair (as Axolotl)."""
    t = cfg.training
    problems = []
    if t.saves_per_epoch and t.save_steps is not None:
        problems.append(Problem(("saves_per_epoch",), "save_steps and saves_per_epoch are both set; keep one."))
    if t.evals_per_epoch and t.eval_steps is not None:
        problems.append(Problem(("evals_per_epoch",), "eval_steps and evals_per_epoch are both set; keep one."))
    return problems


# AdapterBlock keys that only mean something with an adapter: set at all (even to the default)
# without `adapter`, they are refused, so a forgotten `adapter: lora` is not a silent full fine-tune.
ADAPTER_ONLY_PREFIXES = ("lora_", "peft_")


def _adapter_problems(a: AdapterBlock, t: TrainingBlock) -> list[Problem]:
    problems = []
    if a.adapter is None:
        for key in sorted(a.model_fields_set - {"adapter", "unfrozen_parameters"}):
            if key.startswith(ADAPTER_ONLY_PREFIXES) or getattr(a, key) != AdapterBlock.model_fields[key].default:
                problems.append(
                    Problem((key,), f"{key} is set but there is no adapter; add `adapter: lora` or remove {key}.")
                )
    elif (a.lora_target_modules is None and not a.lora_target_linear and a.lora_model_dir is None
          and not a.lora_target_parameters):
        problems.append(
            Problem(
                ("adapter",),
                f"adapter: {a.adapter} needs target modules: set `lora_target_linear: true` "
                "or `lora_target_modules: [q_proj, v_proj, ...]` (or `lora_target_parameters`).",
            )
        )
    if a.adapter is not None and a.lora_target_parameters:
        # peft's ParamWrapper (LoRA on a parameter) refuses both: x is not factored out of an expert matmul.
        if a.lora_dropout:
            problems.append(Problem(("lora_dropout",), f"lora_dropout is {a.lora_dropout:g} but lora_target_parameters "
                                    "needs 0: peft's LoRA on a parameter cannot apply dropout to its input (set "
                                    "`lora_dropout: 0`)."))
        if a.peft_use_dora:
            problems.append(Problem(("peft_use_dora",), "peft_use_dora does not work with lora_target_parameters "
                                    "(peft's LoRA on a parameter has no DoRA); remove one."))
    if isinstance(a.lora_target_modules, str):
        import re

        try:
            re.compile(a.lora_target_modules)
        except re.error as err:
            problems.append(Problem(("lora_target_modules",), f"not a valid regular expression: {err}."))
    kwargs = t.gradient_checkpointing_kwargs
    if a.unfrozen_parameters and kwargs is not None and kwargs.use_reentrant:
        problems.append(Problem(("gradient_checkpointing_kwargs", "use_reentrant"),
                                "use_reentrant must be false with unfrozen_parameters (a partly frozen model)."))
    return problems


def _quantization_problems(a: AdapterBlock, m: ModelBlock) -> list[Problem]:
    problems = []
    if m.model_quantization_config is not None:
        if not (m.model_quantization_config_kwargs and m.model_quantization_config_kwargs.dequantize):
            problems.append(Problem(("model_quantization_config",), f"{m.model_quantization_config!r}: not supported "
                                    "yet: training MXFP4 weights as stored (transformers cannot). An Axolotl key tuner does "
                                    "not support yet; set `model_quantization_config_kwargs: {dequantize: true}` to train "
                                    "the dequantized weights"))
        if a.load_in_4bit or a.load_in_8bit:
            problems.append(Problem(("model_quantization_config",), "model_quantization_config and load_in_4bit / "
                                    "load_in_8bit are both set; pick one (as in Axolotl)."))
    elif m.model_quantization_config_kwargs is not None:
        problems.append(Problem(("model_quantization_config_kwargs",), "model_quantization_config_kwargs is set but "
                                "model_quantization_config is not; set `model_quantization_config: Mxfp4Config`."))
    if a.adapter == "qlora" and not a.load_in_4bit:
        problems.append(Problem(("load_in_4bit",), "adapter: qlora needs `load_in_4bit: true`."))
    if a.load_in_4bit and a.adapter != "qlora":
        problems.append(Problem(("load_in_4bit",), "load_in_4bit trains through an adapter: set `adapter: qlora`."))
    if a.load_in_8bit and a.adapter != "lora":
        problems.append(Problem(("load_in_8bit",), "load_in_8bit trains through an adapter: set `adapter: lora`."))
    if a.load_in_4bit and a.load_in_8bit:
        problems.append(Problem(("load_in_8bit",), "load_in_4bit and load_in_8bit are both true; pick one."))
    return problems


def _engine_problems(t: TrainingBlock) -> list[Problem]:
    problems = []
    if t.dp_shard_size and t.dp_shard_size > 1 and not t.fsdp:
        problems.append(Problem(("dp_shard_size",), f"dp_shard_size: {t.dp_shard_size} shards the model with FSDP; "
                                "set fsdp (e.g. fsdp_config: {fsdp_version: 2}) or remove dp_shard_size."))
    if t.fsdp and t.deepspeed is not None:
        problems.append(Problem(("deepspeed",), "fsdp and deepspeed are both set; pick one."))
    if isinstance(t.deepspeed, str):
        from pathlib import Path

        if not Path(t.deepspeed).is_file():
            problems.append(Problem(("deepspeed",), f"{t.deepspeed!r}: no such DeepSpeed JSON file."))
    return problems


def _batch_problems(d: DataBlock) -> list[Problem]:
    problems = []
    if d.batch_flattening and d.sample_packing:
        problems.append(Problem(("batch_flattening",), "batch_flattening is for unpacked batches, and sample_packing "
                                "already packs rows without padding; keep one."))
    if d.batch_flattening and d.pad_to_sequence_len:
        problems.append(Problem(("batch_flattening",), "batch_flattening removes padding and pad_to_sequence_len adds "
                                "it; keep one."))
    return problems


def _eval_problems(cfg: TunerConfig) -> list[Problem]:
    d, problems = cfg.data, []
    if cfg.training.eval_steps is not None and not d.val_set_size and not d.test_datasets:
        problems.append(
            Problem(("eval_steps",), "eval_steps is set but there is nothing to evaluate: set val_set_size or test_datasets.")
        )
    if cfg.training.early_stopping_patience and not d.val_set_size and not d.test_datasets:
        problems.append(Problem(("early_stopping_patience",), "early_stopping_patience watches eval_loss, but there is "
                                "nothing to evaluate: set val_set_size or test_datasets."))
    if d.test_datasets and d.val_set_size:
        problems.append(Problem(("val_set_size",), "val_set_size and test_datasets are both set; evaluate on one of them."))
    return problems


def _chat_template_problems(d: DataBlock) -> list[Problem]:
    problems = []
    if d.chat_template in dataset_types.UNSHIPPED_TEMPLATES:
        problems.append(Problem(("chat_template",), f"{d.chat_template!r} is "
                                f"{dataset_types.UNSHIPPED_TEMPLATES[d.chat_template]}: not supported yet."))
    if d.chat_template == "jinja" and not d.chat_template_jinja:
        problems.append(Problem(("chat_template",), "chat_template: jinja needs the template in chat_template_jinja."))
    if d.chat_template_jinja and d.chat_template not in (None, "jinja"):
        problems.append(
            Problem(("chat_template_jinja",), f"chat_template_jinja is set but chat_template is {d.chat_template}; remove one.")
        )
    return problems


def _dataset_problems(d: DataBlock) -> list[Problem]:
    problems = []
    for key, entries in (("datasets", d.datasets), ("test_datasets", d.test_datasets or [])):
        for i, ds in enumerate(entries):
            problems += ds.problems((key, i))
            if isinstance(ds.type, UserDefinedFormat):
                problems += _format_problems(ds.type, (key, i, "type"))
    return problems


def _split_problems(cfg: TunerConfig) -> list[Problem]:
    """excess_length_strategy: split and overlap_len: completion text only, overlap below sequence_len."""
    d, problems = cfg.data, []
    for key, entries in (("datasets", d.datasets), ("test_datasets", d.test_datasets or [])):
        for i, ds in enumerate(entries):
            if ds.overlap_len is None:
                pass
            elif ds.kind != "completion":
                problems.append(Problem((key, i, "overlap_len"), f"overlap_len applies to type completion only, not "
                                                                 f"{ds.kind}."))
            elif d.excess_length_strategy != "split":
                problems.append(Problem((key, i, "overlap_len"), f"overlap_len is the overlap of split pieces, but "
                                        f"excess_length_strategy is {d.excess_length_strategy}; set "
                                        "`excess_length_strategy: split` or remove overlap_len."))
            elif ds.overlap_len >= d.sequence_len:
                problems.append(Problem((key, i, "overlap_len"), f"overlap_len {ds.overlap_len} must be less than "
                                        f"sequence_len {d.sequence_len} (each piece must bring new tokens)."))
            if d.excess_length_strategy == "split" and ds.kind != "completion":
                problems.append(Problem(("excess_length_strategy",), f"split cuts the text of type completion rows; "
                                        f"{key}[{i}] is type {ds.kind}, whose rows it would cut apart (a prompt from its "
                                        "answer). Use drop or truncate, or give that data as type completion."))
    return problems


def _mixture_problems(d: DataBlock) -> list[Problem]:
    """weight (datasets only), mix_strategy and interleave_probs (one probability per dataset, summing to 1)."""
    problems = []
    for i, ds in enumerate(d.test_datasets or []):
        if ds.weight is not None:
            problems.append(Problem(("test_datasets", i, "weight"), "weight subsamples training data; evaluation "
                                    "uses every row of test_datasets (remove weight here)."))
    probs = d.interleave_probs
    if probs is None:
        return problems
    if d.mix_strategy == "concat":
        problems.append(Problem(("interleave_probs",), "interleave_probs are the proportions of an interleaved "
                                "mixture, but mix_strategy is concat; set `mix_strategy: interleave_under` (or "
                                "interleave_over) or remove interleave_probs."))
    elif len(probs) != len(d.datasets):
        problems.append(Problem(("interleave_probs",), f"{len(probs)} probabilities for {len(d.datasets)} datasets; "
                                "give one per entry of `datasets`, in their order."))
    elif abs(sum(probs) - 1) > 1e-6:
        problems.append(Problem(("interleave_probs",), f"{', '.join(f'{p:g}' for p in probs)} sum to {sum(probs):g}; "
                                "they are probabilities and must sum to 1."))
    return problems


def _stream_problems(cfg: TunerConfig) -> list[Problem]:
    """`datasets` or `pretraining_dataset` (one corpus, with max_steps, supervised training, no
    evaluation split yet)."""
    d, t = cfg.data, cfg.training
    streams = d.pretraining_dataset
    if not streams:
        if not d.datasets:
            return [Problem(("datasets",), "required key is missing: the training data (a list of datasets), or "
                                           "pretraining_dataset for a streamed corpus.")]
        return []
    problems = []
    if d.datasets:
        problems.append(Problem(("pretraining_dataset",), "datasets and pretraining_dataset are both set; a run "
                                "trains on one of them (remove one)."))
    if len(streams) > 1:
        problems.append(Problem(("pretraining_dataset",), f"{len(streams)} corpora: streaming more than one "
                                "(a mixture of streams) is not supported yet; put the shards in one folder."))
    if t.max_steps is None:
        problems.append(Problem(("max_steps",), "pretraining_dataset streams a corpus whose length is not known "
                                "in advance: set max_steps (the run's length in optimizer steps)."))
    if d.val_set_size:
        problems.append(Problem(("val_set_size",), "evaluation rows held out of a streamed corpus: not supported "
                                "yet; remove val_set_size."))
    if d.test_datasets:
        problems.append(Problem(("test_datasets",), "evaluation during a pretraining_dataset run: not supported "
                                "yet; remove test_datasets."))
    if cfg.preference.rl is not None:
        problems.append(Problem(("pretraining_dataset",), f"a streamed corpus trains a causal LM on every token; "
                                f"rl: {cfg.preference.rl} trains on preference datasets."))
    return problems


def _format_problems(fmt: UserDefinedFormat, path: tuple[Any, ...]) -> list[Problem]:
    import string

    out = []
    allowed = {"instruction", "input"}
    for name in ("format", "no_input_format"):
        text = getattr(fmt, name)
        if text is None:
            continue
        try:
            used = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
        except ValueError as err:
            out.append(Problem(path + (name,), f"{text!r} is not a valid format string: {err}."))
            continue
        unknown = sorted(used - allowed)
        if unknown:
            out.append(Problem(path + (name,), f"{text!r} uses {{{unknown[0]}}}; allowed placeholders: {{instruction}}, {{input}}."))
        elif name == "format" and "instruction" not in used:
            out.append(Problem(path + (name,), f"{text!r} has no {{instruction}} placeholder."))
    try:
        fmt.system_format.format(system="")
    except (KeyError, IndexError, ValueError):
        out.append(Problem(path + ("system_format",), f"{fmt.system_format!r} may only use {{system}}."))
    return out


# TRL 1.16's DPO loss types (`dpo_loss_type`); "sft" is the NLL term on chosen completions (RPO).
DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "robust", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sigmoid_norm", "sft")
SMOOTHED_LOSSES = ("sigmoid", "robust", "exo_pair", "aot", "aot_unpaired")
# keys of one method only -> the methods they belong to
METHOD_KEYS = {
    "dpo_loss_type": ("dpo",), "dpo_loss_weights": ("dpo",), "dpo_label_smoothing": ("dpo",), "rpo_alpha": ("dpo",),
    "simpo_gamma": ("simpo",), "cpo_alpha": ("simpo",), "orpo_alpha": ("orpo",),
    "kto_desirable_weight": ("kto",), "kto_undesirable_weight": ("kto",),
    "precompute_ref_log_probs": ("dpo", "ipo"),
}


def _preference_problems(cfg: TunerConfig) -> list[Problem]:
    """`rl:` and its keys: each method's own keys only with that method, and what SFT-only keys mean."""
    p, d = cfg.preference, cfg.data
    set_keys = {k for k in p.model_fields_set if getattr(p, k) not in (None, False)} - {"rl", "center_rewards_coefficient"}
    if p.rl is None:
        return [Problem((k,), f"{k} is set but rl is not: it belongs to preference training; add `rl:` (dpo, ipo, "
                              "simpo, orpo or kto) or remove it.") for k in sorted(set_keys)]
    problems = [Problem((k,), f"{k} applies to rl: {' / '.join(METHOD_KEYS[k])}, not to rl: {p.rl}; remove it or "
                              f"set rl: {METHOD_KEYS[k][0]}.")
                for k in sorted(set_keys) if k in METHOD_KEYS and p.rl not in METHOD_KEYS[k]]
    types = p.dpo_loss_type or []
    for i, name in enumerate(types):
        if name not in DPO_LOSS_TYPES:
            problems.append(Problem(("dpo_loss_type", i), f"{name!r} is not a DPO loss type; TRL's: "
                                                          f"{', '.join(DPO_LOSS_TYPES)}.{did_you_mean(name, DPO_LOSS_TYPES)}"))
    if p.dpo_loss_weights is not None and len(p.dpo_loss_weights) != len(types or ["sigmoid"]):
        problems.append(Problem(("dpo_loss_weights",), f"{len(p.dpo_loss_weights)} weight(s) for "
                                                       f"{len(types or ['sigmoid'])} dpo_loss_type entries; give one per type."))
    if p.dpo_label_smoothing and not set(types or ["sigmoid"]) & set(SMOOTHED_LOSSES):
        problems.append(Problem(("dpo_label_smoothing",), f"dpo_label_smoothing applies to {', '.join(SMOOTHED_LOSSES)}; "
                                                          f"dpo_loss_type is {types}."))
    if p.rl_beta is not None and p.trl is not None and p.trl.beta is not None and p.rl_beta != p.trl.beta:
        problems.append(Problem(("rl_beta",), f"rl_beta {p.rl_beta} and trl.beta {p.trl.beta} differ; keep one."))
    for key in ("sample_packing", "batch_flattening", "eval_sample_packing", "train_on_inputs"):
        if getattr(d, key):
            why = ("under rl: the sequences of a micro-batch already go through the model end to end, without "
                   "padding" if key != "train_on_inputs" else "preference losses compare completions; prompts never train")
            problems.append(Problem((key,), f"{key} is for supervised fine-tuning: {why}; remove it."))
    if p.rl == "kto" and cfg.training.micro_batch_size < 2:
        problems.append(Problem(("micro_batch_size",), "rl: kto needs micro_batch_size 2 or more: each example's KL "
                                                       "term pairs its prompt with another example's completion in the "
                                                       "same micro-batch (as TRL)."))
    return problems


# TRL 1.16 GRPO loss types tuner does not train yet
OTHER_GRPO_LOSS_TYPES = ("cispo", "sapo", "luspo", "vespo")
GRPO_KEYS = ("num_generations", "max_completion_length", "temperature", "top_p", "top_k", "min_p",
             "repetition_penalty", "epsilon", "epsilon_high", "loss_type", "scale_rewards", "num_iterations",
             "mask_truncated_completions", "use_bias_correction_kl", "reward_funcs", "reward_model_path",
             "reward_weights", "log_completions",
             "num_completions_to_print", "use_vllm")


def is_model_path(entry: str) -> bool:
    """A trl.reward_funcs entry that names a reward model folder (a path: it has a / or starts with . or ~),
    not a reward function (a dotted path module.function)."""
    return "/" in entry or "\\" in entry or entry.startswith((".", "~"))


def _grpo_problems(cfg: TunerConfig) -> list[Problem]:
    """rl: grpo and its `trl:` keys (TRL 1.16's GRPOConfig names, as Axolotl writes them)."""
    p, t, d = cfg.preference, cfg.training, cfg.data
    trl = p.trl or TRLBlock()
    set_keys = [k for k in GRPO_KEYS if getattr(trl, k) not in (None, False)]
    if p.rl != "grpo":
        problems = [Problem(("trl", k), f"trl.{k} is a GRPO setting; it applies to rl: grpo, not to "
                                        f"{'rl: ' + p.rl if p.rl else 'supervised fine-tuning'}.") for k in set_keys]
        if trl.beta == 0:
            problems.append(Problem(("trl", "beta"), "trl.beta: 0 only means something to rl: grpo (no KL term); "
                                                     f"{p.rl or 'this objective'} needs a beta above 0."))
        return problems
    problems = []
    if trl.use_vllm:
        problems.append(Problem(("trl", "use_vllm"), "use_vllm: true: generation with vLLM is not supported yet "
                                                     "(it needs a CUDA GPU and a vLLM server or colocated engine); "
                                                     "tuner generates with transformers (KV cache on). Set use_vllm: "
                                                     "false or remove it."))
    if trl.loss_type is not None and trl.loss_type not in GRPO_LOSS_TYPES:
        if trl.loss_type in OTHER_GRPO_LOSS_TYPES:
            problems.append(Problem(("trl", "loss_type"), f"loss_type {trl.loss_type!r}: not supported yet; tuner "
                                                          f"trains {', '.join(GRPO_LOSS_TYPES)}."))
        else:
            problems.append(Problem(("trl", "loss_type"), f"{trl.loss_type!r} is not a GRPO loss type; allowed: "
                                                          f"{', '.join(GRPO_LOSS_TYPES)}."
                                                          f"{did_you_mean(trl.loss_type, GRPO_LOSS_TYPES)}"))
    rewards = len(trl.reward_funcs or []) + (trl.reward_model_path is not None)
    if not rewards:
        problems.append(Problem(("trl", "reward_funcs"), "rl: grpo needs reward functions: trl.reward_funcs: "
                                                         "[module.function, ...] (your own Python, found next to the "
                                                         "config file or on PYTHONPATH), or a reward model folder "
                                                         "(trl.reward_model_path)."))
    elif trl.reward_weights is not None and len(trl.reward_weights) != rewards:
        with_model = " and reward_model_path" if trl.reward_model_path is not None else ""
        problems.append(Problem(("trl", "reward_weights"), f"{len(trl.reward_weights)} weight(s) for "
                                                           f"{rewards} reward function(s) (reward_funcs{with_model}); "
                                                           "give one per function."))
    for i, name in enumerate(trl.reward_funcs or []):
        parts = name.split(".")
        if not is_model_path(name) and (len(parts) < 2 or not all(part.isidentifier() for part in parts)):
            problems.append(Problem(("trl", "reward_funcs", i), f"{name!r} is not a dotted path module.function "
                                                                "(e.g. rewards.format_reward), nor a reward model "
                                                                f"folder written as a path (./{name}, models/rm)."))
    if trl.reward_model_path is not None and not trl.reward_model_path.strip():
        problems.append(Problem(("trl", "reward_model_path"), "is empty: give the folder of a reward model."))
    generations = trl.num_generations or 8
    per_step = t.micro_batch_size * t.gradient_accumulation_steps
    if per_step % generations:
        problems.append(Problem(("micro_batch_size",), f"rl: grpo: micro_batch_size counts completions; "
                                                       f"micro_batch_size {t.micro_batch_size} x "
                                                       f"gradient_accumulation_steps {t.gradient_accumulation_steps} "
                                                       f"= {per_step} completions per step is not a multiple of "
                                                       f"trl.num_generations {generations} (whole groups per step)."))
    if d.test_datasets or d.val_set_size:
        key = "test_datasets" if d.test_datasets else "val_set_size"
        problems.append(Problem((key,), f"{key}: evaluation under rl: grpo (generating on held-out prompts) is not "
                                        "supported yet; remove it (reward metrics are logged every logging step)."))
    return problems


# --------------------------------------------------------------------------- heads

CAUSAL_LM_HEADS = "AutoModelForCausalLM or a *ForCausalLM class (e.g. LlamaForCausalLM)"
CLASSIFIER_HEADS = "AutoModelForSequenceClassification or a *ForSequenceClassification class (e.g. LlamaForSequenceClassification)"


def is_sequence_classifier(name: str) -> bool:
    """A transformers class name for a sequence-classification head (backbone + a linear `score`)."""
    return name == "AutoModelForSequenceClassification" or name.endswith("ForSequenceClassification")


def is_causal_lm(name: str) -> bool:
    return name == "AutoModelForCausalLM" or name.endswith("ForCausalLM")


def _head_problems(cfg: TunerConfig) -> list[Problem]:
    """reward_model / classification keys: the head fits the objective, the label keys agree, the
    datasets are of the kind the objective reads."""
    m, p, d = cfg.model, cfg.preference, cfg.data
    objective = cfg.objective
    problems: list[Problem] = []
    if m.reward_model and p.rl:
        problems.append(Problem(("reward_model",), f"reward_model: true trains a reward model on pairs and rl: {p.rl} "
                                                   "trains a policy; set one of them."))
    if p.center_rewards_coefficient is not None and not m.reward_model:
        problems.append(Problem(("center_rewards_coefficient",), "center_rewards_coefficient applies to reward models; "
                                                                 "set reward_model: true or remove it."))
    if m.model_type is not None:
        head_fits = is_sequence_classifier(m.model_type) if objective in ("reward", "classification") else \
            is_causal_lm(m.model_type)
        if not head_fits and (is_causal_lm(m.model_type) or is_sequence_classifier(m.model_type)):
            what = {"reward": "reward_model: true", "classification": "sequence classification (num_labels / "
                    "id2label / label2id or type classification datasets)"}.get(
                objective, f"rl: {objective}" if p.rl else "supervised fine-tuning")
            fits = CLASSIFIER_HEADS if objective in ("reward", "classification") else CAUSAL_LM_HEADS
            problems.append(Problem(("model_type",), f"{m.model_type} is a "
                                                     f"{'sequence-classification' if is_sequence_classifier(m.model_type) else 'causal-LM'} "
                                                     f"head, which does not fit {what}. Heads that fit: {fits}."))
    if objective not in ("reward", "classification"):
        return problems
    if m.reward_model:
        for key in ("id2label", "label2id"):
            if getattr(m, key):
                problems.append(Problem((key,), f"{key} is for sequence classification; a reward model has one "
                                                "output (its reward) and no classes."))
        if m.num_labels is not None and m.num_labels != 1:
            problems.append(Problem(("num_labels",), f"num_labels: {m.num_labels}: a reward model has one output "
                                                     "(num_labels: 1); remove it or set 1."))
    else:
        problems += _label_map_problems(m)
        for key in ("datasets", "test_datasets"):
            for i, ds in enumerate(getattr(d, key) or []):
                if ds.kind != "classification":
                    problems.append(Problem((key, i, "type"), f"{ds.kind} rows cannot train a sequence classifier; "
                                                              "use type: classification (field_text, field_label)."))
    for key in ("sample_packing", "batch_flattening", "eval_sample_packing", "train_on_inputs"):
        if getattr(d, key):
            why = ("the sequences of a micro-batch already go through the model end to end, without padding"
                   if key != "train_on_inputs" else "the head reads whole sequences; there are no token labels")
            problems.append(Problem((key,), f"{key} is for supervised fine-tuning, not "
                                            f"{'reward models' if m.reward_model else 'sequence classification'}: "
                                            f"{why}; remove it."))
    return problems


def _label_map_problems(m: ModelBlock) -> list[Problem]:
    problems = []
    maps = {}
    if m.id2label:
        maps["id2label"] = dict(m.id2label)
    if m.label2id:
        maps["label2id"] = {i: name for name, i in m.label2id.items()}
        if len(maps["label2id"]) != len(m.label2id):
            problems.append(Problem(("label2id",), "label2id gives two names the same id."))
    if "id2label" in maps and "label2id" in maps and maps["id2label"] != maps["label2id"]:
        problems.append(Problem(("label2id",), f"label2id {m.label2id} is not the inverse of id2label {m.id2label}; "
                                               "give one of them."))
    for key, by_id in maps.items():
        if sorted(by_id) != list(range(len(by_id))):
            problems.append(Problem((key,), f"{key}: the ids {sorted(by_id)} must be 0, 1, ..., {len(by_id) - 1}."))
        elif m.num_labels is not None and m.num_labels != len(by_id) and m.num_labels != 1:
            problems.append(Problem(("num_labels",), f"num_labels: {m.num_labels} but {key} names {len(by_id)} "
                                                     "classes; remove num_labels or make them agree."))
        if m.num_labels == 1:
            problems.append(Problem((key,), f"{key} with num_labels: 1 (regression on a number): a regression has "
                                            "no classes; remove one of them."))
    return problems
