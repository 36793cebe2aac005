"""Reward functions for examples/grpo.yml (named there as `grpo_rewards.brief_and_on_topic`).

TRL's convention: f(prompts, completions, **columns) -> one float per completion. With
conversational prompts each completion is a list holding the assistant message; every other
column of the dataset row (here `topic`) comes as a keyword argument, one value per completion.
"""

MAX_WORDS = 10


def _text(completion):
    return completion[0]["content"] if isinstance(completion, list) else completion


def brief_and_on_topic(prompts, completions, topic, **columns):
    """1.0 for an answer of at most MAX_WORDS words that names the topic's noun ("fox" for
    "a fox"), else 0.0. The prompts ask for one short sentence about the topic; SmolLM2-135M-Instruct
    rarely keeps it that short, and an answer that is short but off topic earns nothing."""
    rewards = []
    for completion, about in zip(completions, topic):
        text = _text(completion)
        words = text.lower().replace(".", " ").replace(",", " ").replace("!", " ").split()
        rewards.append(1.0 if 0 < len(text.split()) <= MAX_WORDS and about.split()[-1].lower() in words else 0.0)
    return rewards
