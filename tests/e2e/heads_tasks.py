"""The small tasks the SmolLM2 learning runs of reward models and classifiers train on (written
here, deterministic): which answer names a thing of the asked kind (pairs), and the sentiment of
a short review (texts). Held-out rows are new combinations, never seen in training."""

from __future__ import annotations

import random

KINDS = {
    "fruit": ["apple", "banana", "cherry", "grape", "mango", "pear", "peach", "lemon", "plum", "orange"],
    "animal": ["dog", "cat", "horse", "lion", "tiger", "rabbit", "sheep", "mouse", "bear", "wolf"],
    "colour": ["red", "blue", "green", "yellow", "purple", "black", "white", "pink", "brown", "grey"],
    "country": ["France", "Japan", "Brazil", "Canada", "Egypt", "India", "Mexico", "Spain", "Kenya", "Norway"],
}
PHRASES = ["Name a {kind}.", "Tell me one {kind}.", "Can you give me an example of a {kind}?", "Which {kind} comes to mind?"]
ANSWERS = ["{word}.", "Sure: {word}.", "One {kind} is {word}.", "{word}, for example."]


def kind_pairs(n: int, seed: int) -> list[dict]:
    """Pairs: the prompt asks for a thing of one kind; chosen names one, rejected names a thing of
    another kind, in the same answer phrasing."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        kind, other = rng.sample(sorted(KINDS), 2)
        answer = rng.choice(ANSWERS)
        rows.append({
            "messages": [{"role": "user", "content": rng.choice(PHRASES).format(kind=kind)}],
            "chosen": {"role": "assistant", "content": answer.format(word=rng.choice(KINDS[kind]), kind=kind)},
            "rejected": {"role": "assistant", "content": answer.format(word=rng.choice(KINDS[other]), kind=kind)},
        })
    return rows


GOOD = ["wonderful", "excellent", "delightful", "superb", "fantastic", "lovely", "brilliant", "great", "charming",
        "pleasant"]
BAD = ["terrible", "awful", "dreadful", "horrible", "boring", "disappointing", "poor", "dull", "annoying", "bad"]
THINGS = ["film", "meal", "hotel", "book", "concert", "service", "phone", "trip", "game", "show", "coffee", "class"]
TEMPLATES = ["The {thing} was {adj}.", "What a {adj} {thing}!", "I found the {thing} {adj}.",
             "Honestly, a {adj} {thing}.", "Our {thing} turned out {adj}."]


def plain_kind_pairs(n: int, seed: int) -> list[dict]:
    """kind_pairs as plain text (type passthrough: prompt, chosen, rejected), a few tokens each."""
    rows = []
    for row in kind_pairs(n, seed):
        rows.append({"prompt": f"Question: {row['messages'][0]['content']}\nAnswer:",
                     "chosen": " " + row["chosen"]["content"], "rejected": " " + row["rejected"]["content"]})
    return rows


def reviews(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = ("positive", "negative")[i % 2]
        adj = rng.choice(GOOD if label == "positive" else BAD)
        rows.append({"text": rng.choice(TEMPLATES).format(thing=rng.choice(THINGS), adj=adj), "label": label})
    return rows
