"""Task heads beyond the causal LM: sequence classification (and reward models, its one-output
case). "AutoModel is the backbone, AutoModelForXXX is backbone + head": a
*ForSequenceClassification model is the decoder plus a linear `score` head read at one
position per sequence.

Which class a config loads (`head_class`): `model_type` when set; else, for a reward model or
a classification config, AutoModelForSequenceClassification (its concrete class follows the
checkpoint's model_type); a checkpoint saved as a classifier (config.json `architectures`)
keeps its trained head. A class whose head does not fit the objective is refused, naming the
heads that do.

Where a sequence is read (`pooled_positions`): at its last token that is not the pad token,
transformers' own rule for these models (the rightmost non-pad token), applied per sequence,
so that it holds with left padding, right padding and padding-free (packed) rows alike. With
pad = EOS (SmolLM2) a trailing EOS is therefore not the position read, exactly as plain
transformers scores the saved model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner.config.schema import CAUSAL_LM_HEADS, CLASSIFIER_HEADS, ModelBlock, is_causal_lm, is_sequence_classifier
from tuner.errors import UserError

AUTO_CLASSIFIER = "AutoModelForSequenceClassification"
HEAD_CONFIG = "head_config.json"  # with an adapter: the classifier's config (labels), beside the adapter


@dataclass(frozen=True)
class Head:
    """A sequence-classification head: what the model is loaded with."""

    num_labels: int
    id2label: dict[int, str] = field(default_factory=dict)
    problem_type: str = "single_label_classification"  # or "regression" (num_labels 1)

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in self.id2label.items()}

    def config_kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = {"num_labels": self.num_labels, "problem_type": self.problem_type}
        if self.id2label:
            out["id2label"] = dict(self.id2label)
            out["label2id"] = self.label2id
        return out


REWARD_HEAD = Head(1, {0: "reward"}, "regression")


def checkpoint_classifier(config: Any) -> str | None:
    """The sequence-classification class the checkpoint was saved as (config.json architectures), or None."""
    archs = list(getattr(config, "architectures", None) or [])
    return next((a for a in archs if is_sequence_classifier(a)), None)


def head_class(m: ModelBlock, objective: str, config: Any) -> tuple[str, str]:
    """(the class name to load, why) for the model block, the objective (TunerConfig.objective)
    and the checkpoint's transformers config. Raises UserError when the checkpoint's head does
    not fit the objective."""
    archs = ", ".join(getattr(config, "architectures", None) or []) or "none"
    saved = checkpoint_classifier(config)
    if objective not in ("reward", "classification"):
        if m.model_type:
            return m.model_type, f"model_type: {m.model_type} in the config (config.json architectures: {archs})"
        if saved and not any(is_causal_lm(a) for a in config.architectures):
            raise UserError(
                f"base_model was saved as {saved} (config.json architectures), a sequence-classification head; "
                f"{'supervised fine-tuning' if objective == 'sft' else 'rl: ' + objective} trains a causal-LM head "
                f"({CAUSAL_LM_HEADS}). Set model_type to one of those to load its backbone with a new LM head, or "
                "train it as a classifier (type: classification datasets) or a reward model (reward_model: true)."
            )
        return "AutoModelForCausalLM", f"AutoModelForCausalLM (the default; config.json architectures: {archs})"
    why = "reward_model: true" if objective == "reward" else "sequence classification (type: classification datasets)"
    if m.model_type:
        return m.model_type, f"model_type: {m.model_type} in the config, for {why} (config.json architectures: {archs})"
    if saved:
        return AUTO_CLASSIFIER, (f"{AUTO_CLASSIFIER} for {why}; the checkpoint was saved as {saved} "
                                 "(config.json architectures): its trained head is loaded")
    return AUTO_CLASSIFIER, (f"{AUTO_CLASSIFIER} for {why}; the checkpoint is {archs}: the backbone is loaded and "
                             "the score head is new (trained and saved)")


def concrete_class(name: str, config: Any) -> str:
    """The concrete transformers class an Auto class resolves to for this config."""
    if name != AUTO_CLASSIFIER:
        return name
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    found = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.get(config.model_type)
    if found is None:
        raise UserError(f"base_model: model_type {config.model_type!r} has no sequence-classification class in "
                        f"transformers; heads that fit: {CLASSIFIER_HEADS}")
    return found


def checkpoint_labels(config: Any) -> dict[int, str] | None:
    """A classifier checkpoint's own class names (None when it is not a classifier, or names none)."""
    if not checkpoint_classifier(config):
        return None
    names = {int(i): str(n) for i, n in (getattr(config, "id2label", None) or {}).items()}
    return names or None


# --------------------------------------------------------------------------- reading the head


def parts(model: Any) -> tuple[Any, Any]:
    """(the backbone, the `score` head) of a decoder sequence classifier (under peft, if any).
    The head may be peft's ModulesToSaveWrapper: calling it runs the trained copy."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = getattr(base, "score", None)
    backbone = getattr(base, "base_model", None)
    if head is None or backbone is None or backbone is base:
        raise UserError(
            f"{type(base).__name__}: tuner reads sequence-classification heads of decoder models (a linear `score` "
            "on the decoder's hidden states, as LlamaForSequenceClassification); this class has none."
        )
    return backbone, head


def pooled_positions(input_ids: Any, sequence: Any, count: int, pad_token_id: int | None) -> Any:
    """Flat positions (into input_ids.flatten()) of the token each sequence 0..count-1 is read at:
    its last position whose token is not the pad token (its last position when every token is
    the pad token). `sequence` gives each position's sequence index (-1: padding)."""
    import torch

    flat_seq = sequence.flatten()
    flat_ids = input_ids.flatten()
    where = torch.arange(flat_seq.numel(), device=flat_seq.device)
    member = flat_seq >= 0
    last = torch.full((count,), -1, dtype=torch.long, device=flat_seq.device)
    last.scatter_reduce_(0, flat_seq[member], where[member], reduce="amax")
    real = member & (flat_ids != pad_token_id) if pad_token_id is not None else member
    read = torch.full((count,), -1, dtype=torch.long, device=flat_seq.device)
    read.scatter_reduce_(0, flat_seq[real], where[real], reduce="amax")
    if bool((last < 0).any()):
        raise ValueError(f"a batch of {count} sequences has no tokens for sequence {int((last < 0).nonzero()[0])}")
    return torch.where(read >= 0, read, last)


def sequence_logits(model: Any, inputs: dict[str, Any], sequence: Any, count: int) -> Any:
    """The head's outputs (count x num_labels, fp32) for the sequences of a batch: the backbone runs
    once over the (padded or packed) batch, the head only at each sequence's pooled position (the
    pad token is the model config's, as transformers reads it)."""
    backbone, head = parts(model)
    hidden = backbone(**inputs, use_cache=False).last_hidden_state
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    at = pooled_positions(inputs["input_ids"], sequence, count, base.config.pad_token_id)
    return head(hidden.flatten(0, 1)[at]).float()


# --------------------------------------------------------------------------- loading a trained classifier


def load_trained(folder: Path, dtype: Any = None) -> tuple[Any, Any]:
    """(model, tokenizer) of a trained sequence classifier: a full model folder, or an adapter
    folder (its base + the classifier config saved beside it as head_config.json)."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    dtype = dtype or torch.float32
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if not (folder / "adapter_config.json").is_file():
        return AutoModelForSequenceClassification.from_pretrained(str(folder), dtype=dtype), tokenizer
    from tuner.models.adapter import peft_calls

    head_file = folder / HEAD_CONFIG
    if not head_file.is_file():
        raise UserError(f"{folder} holds an adapter but no {HEAD_CONFIG}: it was not trained as a sequence "
                        "classifier or reward model")
    base_path = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
    head = json.loads(head_file.read_text())
    config = AutoConfig.from_pretrained(base_path, num_labels=head["num_labels"], id2label=head.get("id2label"),
                                        label2id=head.get("label2id"), problem_type=head.get("problem_type"),
                                        pad_token_id=head.get("pad_token_id"))
    base = AutoModelForSequenceClassification.from_pretrained(base_path, config=config, dtype=dtype)
    if len(tokenizer) > base.get_input_embeddings().weight.shape[0]:
        base.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with peft_calls(quantized=False):
        from peft import PeftModel

        return PeftModel.from_pretrained(base, str(folder)), tokenizer


def write_head_config(model: Any, folder: Path) -> None:
    """With an adapter: the classifier's config (num_labels, labels, pad token) beside it."""
    config = model.get_base_model().config
    head = {"architectures": config.architectures, "num_labels": config.num_labels,
            "id2label": {str(k): v for k, v in config.id2label.items()}, "label2id": dict(config.label2id),
            "problem_type": config.problem_type, "pad_token_id": config.pad_token_id}
    (folder / HEAD_CONFIG).write_text(json.dumps(head, indent=2), encoding="utf-8")


def is_classifier(model: Any) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return any(is_sequence_classifier(a) for a in (getattr(base.config, "architectures", None) or [])) or \
        type(base).__name__.endswith("ForSequenceClassification")
