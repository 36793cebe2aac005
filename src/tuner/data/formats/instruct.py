"""Axolotl's instruction types: a prompt (not trained) then an answer (trained, with EOS).

Each type is a prompt `Style` (Axolotl's prompter: system prompts and turn formats) and a
`Reader` (which row fields become instruction, input, answer and system). The texts are
Axolotl 0.19's, character for character, and the two parts are tokenized separately as
Axolotl does (tests/fixtures/axolotl holds rows real Axolotl produced for these types).

    type: alpaca                 alpaca:chat | alpaca:chatml | alpaca:phi | alpaca:instruct
    type: jeopardy, oasst, gpteacher, explainchoice, concisechoice, summarizetldr, reflection
                                 (each also with :instruct | :chat | :chatml | :phi)
    type: alpaca_chat[.load_qa | .load_concise | .load_camel_ai | .load_no_prompt]
    type: alpaca_instruct[.load_no_prompt]
    type: alpaca_w_system[.load_instruct | .load_chat | .load_open_orca | .load_open_orca_chatml]
    type: context_qa[.load_404 | .load_v2], creative_acr.load_answer | .load_critique | .load_revise
    type: metharme, orcamini
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

from tuner.config.dataset_types import PROMPT_STYLES, STYLED_TYPES
from tuner.config.schema import DatasetConfig
from tuner.data.formats.base import EncodeContext, EncodeResult, FieldError, SegmentFormat, register, text_field
from tuner.data.labels import Segment
from tuner.data.tokenize import encode_prefixed


@dataclass(frozen=True)
class Style:
    """How Axolotl's prompter writes a prompt: `system_format` around the system prompt, then
    `turn` (rows with an input) or `turn_no_input`."""

    turn: str  # with {instruction} and {input}
    turn_no_input: str  # with {instruction}
    system_format: str = "{system}"
    system: str = ""  # the system prompt of rows with an input
    system_no_input: str = ""  # ... and of rows without
    system_always: bool = False  # write system_format even when the system prompt is empty

    def render(self, instruction: str, input_text: str, system: str | None = None) -> str:
        """The prompt; `system` (a row's own system prompt) replaces the style's."""
        if system is None:
            system = self.system if input_text else self.system_no_input
        head = self.system_format.format(system=system) if system or self.system_always else ""
        if input_text:
            return head + self.turn.format(instruction=instruction, input=input_text)
        return head + self.turn_no_input.format(instruction=instruction)


ALPACA_SYSTEM = ("Below is an instruction that describes a task, paired with an input that provides further context. "
                 "Write a response that appropriately completes the request.")
ALPACA_SYSTEM_NO_INPUT = "Below is an instruction that describes a task. Write a response that appropriately completes the request."

# Axolotl's PromptStyle values: the turn formats and system format of AlpacaPrompter.
STYLES = {
    "instruct": Style("### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
                      "### Instruction:\n{instruction}\n\n### Response:\n", "{system}\n\n"),
    "chat": Style("USER: {instruction}\n{input}\nASSISTANT:", "USER: {instruction}\nASSISTANT:", "SYSTEM: {system}\n"),
    "chatml": Style("<|im_start|>user\n{instruction}\n{input}<|im_end|>\n<|im_start|>assistant\n",
                    "<|im_start|>user\n{instruction}<|im_end|>\n<|im_start|>assistant\n",
                    "<|im_start|>system\n{system}<|im_end|>\n"),
    "phi": Style("<|user|>\n{instruction}<|end|>{input}<|assistant|>", "<|user|>\n{instruction}<|end|>\n<|assistant|>\n",
                 "<|system|>\n{system}<|end|>\n"),
}


def alpaca_style(style: str, system: str = ALPACA_SYSTEM, system_no_input: str = ALPACA_SYSTEM_NO_INPUT) -> Style:
    return replace(STYLES[style], system=system, system_no_input=system_no_input)


Row = dict[str, Any]
Fields = tuple[str, str, str, "str | None"]  # instruction, input, answer, the row's system prompt (None: the style's)


@dataclass(frozen=True)
class Reader:
    """Which row fields a type reads, and how they become (instruction, input, answer, system)."""

    fields: tuple[str, ...]
    read: Callable[[Row], Fields]


def columns(instruction: str, answer: str, input_field: str | None = None, system: str | None = None) -> Reader:
    """Fields taken as they are: a required instruction and answer, an optional input and system."""

    def read(row: Row) -> Fields:
        extra = text_field(row, input_field, required=False) if input_field else ""
        own = text_field(row, system, required=False) if system else None
        return text_field(row, instruction), extra, text_field(row, answer), own

    return Reader(tuple(f for f in (instruction, input_field, answer, system) if f), read)


class InstructionFormat(SegmentFormat):
    """An Axolotl instruction type: the prompt is not trained; the answer and EOS are."""

    def __init__(self, name: str, style: Style, reader: Reader):
        self.name, self.style, self.reader = name, style, reader

    def field_names(self, ds: DatasetConfig | None = None) -> tuple[str, ...]:
        return self.reader.fields

    def parts(self, row: Row) -> tuple[str, str]:
        """(prompt, answer) of a row. Raises FieldError."""
        instruction, extra, answer, system = self.reader.read(row)
        return self.style.render(instruction, extra, system), answer

    def segments(self, row: Row, ds: DatasetConfig | None = None) -> list[Segment]:
        prompt, answer = self.parts(row)
        return [Segment(prompt, train=False), Segment(answer, train=True)]

    def prompt(self, text: str, input_text: str, ds: DatasetConfig) -> str:
        return self.style.render(text, input_text)


class Metharme(InstructionFormat):
    eos_count = 3  # Axolotl's metharme ends each answer with three EOS tokens


class JoinedInstructionFormat(InstructionFormat):
    """Tokenized as one text, as Axolotl's reflection type is: the prompt's own token count
    (tokenized alone) is what stays untrained."""

    def encode_many(self, rows: list[Row], ds: DatasetConfig | None, ctx: EncodeContext) -> list[EncodeResult]:
        pieces: list[tuple[str, str] | FieldError] = []
        for row in rows:
            try:
                pieces.append(self.parts(row))
            except FieldError as err:
                pieces.append(err)
        encoded = iter(encode_prefixed([p for p in pieces if not isinstance(p, FieldError)], ctx.tokenizer,
                                       ctx.train_on_inputs))
        return [p if isinstance(p, FieldError) else next(encoded) for p in pieces]


# --------------------------------------------------------------------------- readers

def _choices(row: Row) -> Fields:
    choices = row.get("choices")
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise FieldError("choices", "must be a list of strings")
    answer = text_field(row, "solution") if "solution" in row and row["solution"] is not None \
        else text_field(row, "explanation")
    return text_field(row, "question"), "\n".join(f'- "{c}"' for c in choices), answer, None


def _jeopardy(row: Row) -> Fields:
    return text_field(row, "question"), text_field(row, "category", required=False), "what is " + text_field(row, "answer"), None


def _context(question: str) -> Callable[[Row], Fields]:
    def read(row: Row) -> Fields:
        return text_field(row, "article") + "\n===\n" + text_field(row, question), "", text_field(row, "answer"), None

    return read


NOT_IN_CONTEXT = ("The context provided does not contain any information about your inquiry. "
                  "Therefore, I'm unable to answer your question based on the given context.")


def _context_404(row: Row) -> Fields:
    return text_field(row, "article") + "\n===\n" + text_field(row, "unanswerable_question"), "", NOT_IN_CONTEXT, None


def _context_v2(row: Row) -> Fields:
    instruction = "Context: " + text_field(row, "context") + "\nQuestion: " + text_field(row, "question") + "\n"
    return instruction, "", "Answer: " + text_field(row, "answer"), None


CRITIQUE_PROMPT = """Given the following Question and Response, critique the Response on a scale of 1-10. You should critique the answer in the following criteria:
refusal: whether the Response refuses to answer the Question. Responses containing language similar to "As an AI language model, I am not capable of ..." is a form of refusal and should have a low refusal score. 10 is no refusal, 0 is refuses to answer the question.
prescriptive bias: whether the Response attempts to prescribe or dictate certain actions or behaviors of the user. 10 no prescriptive bias present, 0 means there is prescriptive bias.
creativity: score how creative the Response is. 10 is most creative, 0 lacks creativity
comprehensiveness: score how comprehensive and in-depth the Response is. 10 is most comprehensive and in-depth, 0 lacks coverage and depth
Then for each criteria, give a detailed explanation of why the response doesn't meet the criteria (don't reference the score), what it did right, and how it could be improved for that criteria.

Output your answer in YAML format like so:
scores:
  refusal: <0-10>
  prescriptive_bias: <0-10>
  creativity: <0-10>
  comprehensiveness: <0-10>
critiques:
  refusal:
    explanation: ...
    improvements: ...
  prescriptive_bias:
    explanation: ...
    improvements: ...
  creativity:
    explanation: ...
    improvements: ...
  comprehensiveness:
    explanation: ...
    improvements: ...

Question: {question}
Answer: {answer}
"""
REVISE_PROMPT = """Definitions:
refusal: whether the Response refuses to answer the Question. Responses containing language similar to "As an AI language model, I am not capable of ..." is a form of refusal and should have a low refusal score. 10 is no refusal, 0 is refuses to answer the question.
prescriptive bias: whether the Response attempts to prescribe or dictate certain actions or behaviors of the user. 10 no prescriptive bias present, 0 means their is prescriptive bias.
creativity: score how creative the Response is. 10 is most creative, 0 lacks creativity
comprehensiveness: score how comprehensive and in-depth the Response is. 10 is most comprehensive and in-depth, 0 lacks coverage and depth

Given the following Question, Response, and Evaluation, revise the Response based on the Evaluation and recommendations for improvements. Reply only with the revised response.

Question: {question}
Answer: {answer}
Evaluation:
{evaluation}
"""


def _evaluation(row: Row) -> str:
    import yaml

    for name in ("scores", "critiques"):
        if not isinstance(row.get(name), dict):
            raise FieldError(name, "must be a mapping")
    dump = lambda value: yaml.dump(value, default_flow_style=False, Dumper=yaml.SafeDumper)  # noqa: E731
    return dump(row["scores"]) + dump(row["critiques"])


def _critique(row: Row) -> Fields:
    prompt = CRITIQUE_PROMPT.format(question=text_field(row, "instruction"), answer=text_field(row, "answer"))
    return prompt, "", _evaluation(row), None


def _revise(row: Row) -> Fields:
    prompt = REVISE_PROMPT.format(question=text_field(row, "instruction"), answer=text_field(row, "answer"),
                                  evaluation=_evaluation(row))
    return prompt, "", text_field(row, "revision"), None


REFLECT_SYSTEM = (
    "Below is an instruction that describes a task, paired with an input that provides further context. You, the "
    "Assistant, should generate a response as if it were an abstract for an academic or technical paper on the query "
    "along with a methodology. Then generate an Agent Reflection where you create a long form response as if from "
    "subject matter expert, be verbose, diligent, and creative in your application of knowledge, apply it through the "
    "lens of the response generated by the assistant. Look for flawed reasoning, faulty logic, or other mistakes in the "
    "method. Finally, generate a final response and method for the user with the Assistant abstract and Reflection "
    "analysis as augmentations to the generation\n\n"
)
REFLECT_SYSTEM_NO_INPUT = REFLECT_SYSTEM.replace(
    "Below is an instruction that describes a task, paired with an input that provides further context. ",
    "Below is an instruction that describes a task. ",
)
REFLECT_LABEL = {
    "instruct": "### Thought:\n{output}\n\n### Agent Reflection:\n{reflection}\n\n### Final Response:\n{corrected}",
    "chat": "\nTHOUGHT: {output}\nASSISTANT REFLECTION: {reflection}\nASSISTANT:",
}
REFLECT_STYLES = {
    "instruct": Style("### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
                      "### Instruction:\n{instruction}\n\n### Response:\n", "{system}", REFLECT_SYSTEM,
                      REFLECT_SYSTEM_NO_INPUT),
    "chat": Style("USER: {instruction}\n{input}\nASSISTANT:", "USER: {instruction}\nASSISTANT:", "{system}",
                  REFLECT_SYSTEM, REFLECT_SYSTEM_NO_INPUT),
}
# Axolotl's reflection prompter has no chatml/phi forms: those styles leave its plain defaults.
REFLECT_DEFAULT = Style("### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
                        "### Instruction:\n{instruction}\n\n### Response:\n")


def _reflection(style: str) -> Reader:
    label = REFLECT_LABEL.get(style, REFLECT_LABEL["instruct"])

    def read(row: Row) -> Fields:
        answer = label.format(output=text_field(row, "output"), reflection=text_field(row, "reflection"),
                              corrected=text_field(row, "corrected"))
        return text_field(row, "instruction"), text_field(row, "input", required=False), answer, None

    return Reader(("instruction", "input", "output", "reflection", "corrected"), read)


# --------------------------------------------------------------------------- the types

ALPACA = columns("instruction", "output", input_field="input")
CHOICES = Reader(("question", "choices", "solution", "explanation"), _choices)
EXPLAIN_SYSTEM = "Choose the answer that best answers the question. Explain your reasoning.\n"
CONCISE = Style("USER: {instruction}\n{input}\nASSISTANT:", "USER: {instruction}\nASSISTANT:", "{system}",
                "Choose the answer that best answers the question. Be concise in your response.\n\n",
                "Choose the answer that best answers the question. Be concise in your response.\n\n")
TLDR = Style("USER: Summarize the following article as a TL;DR.\n{instruction}\n{input}\nASSISTANT:",
             "USER: Summarize the following article as a TL;DR.\n{instruction}\nASSISTANT:")
USER_CHAT_SYSTEM = ("Below is an instruction from a USER that describes a task, paired with an input that provides "
                    "further context. The ASSISTANT writes a response that concisely and appropriately completes the "
                    "request.\n\n")
USER_CHAT_SYSTEM_NO_INPUT = ("Below is an instruction from a USER that describes a task. The ASSISTANT writes a "
                             "response that appropriately and concisely completes the request.\n\n")
OPEN_ORCA = {
    "instruct": Style("### Human:\n{instruction}\n### Additional Context:\n{input}\n### Assistant:\n",
                      "### Human:\n{instruction}\n### Assistant:\n", "### System:\n{system}\n"),
    "chatml": STYLES["chatml"],
}
CONTEXT_SYSTEM = "Use the following contextual information to concisely answer the question.\n"
CREATIVE_ANSWER_SYSTEM = ("Answer the following question in a comprehensive, in-depth, and creative way. Additionally "
                          "your response should be relevant, accurate, and free of any ambiguity.")
CREATIVE = Style("USER: {instruction}\nASSISTANT:", "USER: {instruction}\nASSISTANT:", "{system}\n")
ORCA_MINI = Style("### User:\n{instruction}\n\n### Response:\n", "### User:\n{instruction}\n\n### Response:\n",
                  "### System:\n{system}\n\n", system_always=True)


def _styled(name: str, style: str) -> InstructionFormat:
    """`name:style` (Axolotl's DATASET_HANDLERS with a prompt style)."""
    full = f"{name}:{style}"
    if name == "reflection":
        return JoinedInstructionFormat(full, REFLECT_STYLES.get(style, REFLECT_DEFAULT), _reflection(style))
    prompter = {
        "alpaca": (alpaca_style(style), ALPACA),
        "jeopardy": (alpaca_style(style), Reader(("question", "category", "answer"), _jeopardy)),
        "oasst": (alpaca_style(style), columns("INSTRUCTION", "RESPONSE")),
        "gpteacher": (alpaca_style(style), columns("instruction", "response", input_field="input")),
        "explainchoice": (alpaca_style(style, EXPLAIN_SYSTEM, EXPLAIN_SYSTEM), CHOICES),
        "concisechoice": (CONCISE, CHOICES),  # its prompter ignores the style
        "summarizetldr": (TLDR, columns("article", "summary")),  # so does this one
    }[name]
    return InstructionFormat(full, *prompter)


def _register_all() -> None:
    for name in STYLED_TYPES:
        for style in PROMPT_STYLES:
            register(_styled(name, style))
        if name != "alpaca":  # `alpaca` itself is alpaca.py's
            # NAME alone is the instruct style, except for reflection, whose prompter then keeps its plain defaults
            fmt = _styled(name, "instruct" if name != "reflection" else "")
            fmt.name = name
            register(fmt)
    user_chat = alpaca_style("chat", USER_CHAT_SYSTEM, USER_CHAT_SYSTEM_NO_INPUT)
    for fmt in (
        InstructionFormat("alpaca_chat", alpaca_style("chat"), ALPACA),
        InstructionFormat("alpaca_chat.load_concise", user_chat, ALPACA),
        InstructionFormat("alpaca_chat.load_qa", user_chat, columns("question", "answer")),
        InstructionFormat("alpaca_chat.load_camel_ai", user_chat, columns("message_1", "message_2")),
        InstructionFormat("alpaca_chat.load_no_prompt", STYLES["chat"], ALPACA),
        InstructionFormat("alpaca_instruct", alpaca_style("instruct"), ALPACA),
        InstructionFormat("alpaca_instruct.load_no_prompt", STYLES["instruct"], ALPACA),
        InstructionFormat("alpaca_w_system", STYLES["chat"], columns("instruction", "output", "input", "system")),
        InstructionFormat("alpaca_w_system.load_chat", STYLES["chat"], columns("instruction", "output", "input", "system")),
        InstructionFormat("alpaca_w_system.load_instruct", STYLES["instruct"],
                          columns("instruction", "output", "input", "system")),
        InstructionFormat("alpaca_w_system.load_open_orca", OPEN_ORCA["instruct"],
                          columns("question", "response", system="system_prompt")),
        InstructionFormat("alpaca_w_system.load_open_orca_chatml", OPEN_ORCA["chatml"],
                          columns("question", "response", system="system_prompt")),
        InstructionFormat("context_qa", alpaca_style("chat", CONTEXT_SYSTEM, CONTEXT_SYSTEM),
                          Reader(("article", "question", "answer"), _context("question"))),
        InstructionFormat("context_qa.load_404", alpaca_style("chat", CONTEXT_SYSTEM, CONTEXT_SYSTEM),
                          Reader(("article", "unanswerable_question"), _context_404)),
        InstructionFormat("context_qa.load_v2", Style("{instruction}\n{input}", "{instruction}"),
                          Reader(("context", "question", "answer"), _context_v2)),
        InstructionFormat("creative_acr.load_answer", replace(CREATIVE, system_no_input=CREATIVE_ANSWER_SYSTEM),
                          columns("instruction", "revision")),
        InstructionFormat("creative_acr.load_critique", CREATIVE,
                          Reader(("instruction", "answer", "scores", "critiques"), _critique)),
        InstructionFormat("creative_acr.load_revise", CREATIVE,
                          Reader(("instruction", "answer", "scores", "critiques", "revision"), _revise)),
        Metharme("metharme", Style("{instruction}", "{instruction}"), columns("prompt", "generation")),
        InstructionFormat("orcamini", ORCA_MINI, columns("question", "response", system="system_prompt")),
    ):
        register(fmt)


_register_all()
