"""Write the small preference task tuner's DPO / KTO / ORPO learning tests train on.

    python examples/data/make_preference_data.py        # rewrites the files below, deterministically

The rule a completion follows or breaks: **every answer ends with the word "Over."** (a radio
sign-off). For each question the chosen answer is a short correct sentence followed by
" Over."; the rejected answer is the same sentence without it. Chosen and rejected share their
whole content, so what a method has to learn is the rule alone, and it carries over to
held-out questions: reward accuracy on the held-out pairs starts at 0 (policy = reference, all
rewards 0) and should pass 0.9 after a few dozen DPO steps with LoRA on SmolLM2.

Files (train and held-out questions are disjoint; every family of questions is in both):
  preference_train.jsonl / preference_heldout.jsonl
      Axolotl's `chat_template.default` DPO shape (docs/rlhf.qmd):
      {"messages": [{"role": "user", "content": Q}],
       "chosen": {"role": "assistant", "content": A + " Over."},
       "rejected": {"role": "assistant", "content": A}}
  kto_train.jsonl / kto_heldout.jsonl
      the unpaired KTO shape of Axolotl's `chatml.prompt_pairs` / `user_defined` KTO types and of
      TRL's standard unpaired data: {"prompt": Q, "completion": ..., "label": true|false}; each
      pair gives one desirable and one undesirable row, shuffled so that batches mix both.
  kto_chat_train.jsonl / kto_chat_heldout.jsonl
      the same rows in TRL's conversational unpaired shape:
      {"prompt": [{"role": "user", ...}], "completion": [{"role": "assistant", ...}], "label": ...}
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20240616
N_TRAIN, N_HELDOUT = 256, 64
MARKER = " Over."

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Greece": "Athens", "Norway": "Oslo", "Sweden": "Stockholm", "Finland": "Helsinki", "Denmark": "Copenhagen",
    "Poland": "Warsaw", "Austria": "Vienna", "Hungary": "Budapest", "Ireland": "Dublin", "Belgium": "Brussels",
    "the Netherlands": "Amsterdam", "Switzerland": "Bern", "Czechia": "Prague", "Russia": "Moscow",
    "Ukraine": "Kyiv", "Turkey": "Ankara", "Egypt": "Cairo", "Kenya": "Nairobi", "Nigeria": "Abuja",
    "Japan": "Tokyo", "China": "Beijing", "India": "New Delhi", "Thailand": "Bangkok", "Vietnam": "Hanoi",
    "South Korea": "Seoul", "Indonesia": "Jakarta", "Australia": "Canberra", "New Zealand": "Wellington",
    "Canada": "Ottawa", "Mexico": "Mexico City", "Brazil": "Brasilia", "Argentina": "Buenos Aires",
    "Chile": "Santiago", "Peru": "Lima", "Cuba": "Havana",
}
OPPOSITES = {
    "hot": "cold", "big": "small", "fast": "slow", "up": "down", "light": "dark", "happy": "sad",
    "early": "late", "full": "empty", "hard": "soft", "high": "low", "open": "closed", "old": "young",
    "rich": "poor", "strong": "weak", "wet": "dry", "long": "short", "near": "far", "clean": "dirty",
    "loud": "quiet", "thick": "thin", "true": "false", "win": "lose", "push": "pull", "buy": "sell",
}
PLURALS = {
    "child": "children", "mouse": "mice", "foot": "feet", "tooth": "teeth", "man": "men", "woman": "women",
    "goose": "geese", "box": "boxes", "city": "cities", "knife": "knives", "leaf": "leaves", "wolf": "wolves",
    "bus": "buses", "baby": "babies", "potato": "potatoes", "sheep": "sheep", "fish": "fish", "person": "people",
    "dish": "dishes", "story": "stories",
}
SOUNDS = {
    "dog": "barks", "cat": "meows", "cow": "moos", "duck": "quacks", "sheep": "bleats", "lion": "roars",
    "horse": "neighs", "owl": "hoots", "pig": "oinks", "frog": "croaks", "snake": "hisses", "bee": "buzzes",
}
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]


def questions() -> list[tuple[str, str, str]]:
    """(family, question, correct one-sentence answer) for every question the task can ask."""
    out = []
    for country, city in CAPITALS.items():
        out.append(("capital", f"What is the capital of {country}?", f"The capital of {country} is {city}."))
    for word, opposite in OPPOSITES.items():
        out.append(("opposite", f"What is the opposite of '{word}'?", f"The opposite of '{word}' is '{opposite}'."))
    for word, plural in PLURALS.items():
        out.append(("plural", f"What is the plural of '{word}'?", f"The plural of '{word}' is '{plural}'."))
    for animal, sound in SOUNDS.items():
        out.append(("sound", f"What sound does a {animal} make?", f"A {animal} {sound}."))
    for i, day in enumerate(DAYS):
        out.append(("day", f"Which day comes after {day}?", f"{DAYS[(i + 1) % 7]} comes after {day}."))
    for i, month in enumerate(MONTHS):
        out.append(("month", f"Which month comes after {month}?", f"{MONTHS[(i + 1) % 12]} comes after {month}."))
    for a in range(2, 13):
        for b in range(2, 13):
            out.append(("add", f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."))
            out.append(("multiply", f"What is {a} times {b}?", f"{a} times {b} is {a * b}."))
    return out


def split(rng: random.Random) -> tuple[list, list]:
    """Disjoint train / held-out questions: held-out takes a quarter of each small family (at least
    two) and arithmetic fills it up; train gets the rest of the small families and arithmetic."""
    pool = questions()
    rng.shuffle(pool)
    small = sorted({f for f, _, _ in pool} - {"add", "multiply"})
    heldout = []
    for family in small:
        members = [q for q in pool if q[0] == family]
        heldout += members[: max(2, len(members) // 4)]
    heldout += [q for q in pool if q not in heldout and q[0] in ("add", "multiply")][: N_HELDOUT - len(heldout)]
    rest = [q for q in pool if q not in heldout]
    # the small families go to train whole; arithmetic fills up the rest
    train = [q for q in rest if q[0] not in ("add", "multiply")]
    train += [q for q in rest if q[0] in ("add", "multiply")][: N_TRAIN - len(train)]
    rng.shuffle(train)
    rng.shuffle(heldout)
    assert len(train) == N_TRAIN and len(heldout) == N_HELDOUT, (len(train), len(heldout))
    assert not {q for _, q, _ in train} & {q for _, q, _ in heldout}
    return train, heldout


def pair_row(question: str, answer: str) -> dict:
    return {
        "messages": [{"role": "user", "content": question}],
        "chosen": {"role": "assistant", "content": answer + MARKER},
        "rejected": {"role": "assistant", "content": answer},
    }


def kto_rows(pairs: list[tuple[str, str, str]], rng: random.Random) -> list[dict]:
    rows = []
    for _, question, answer in pairs:
        rows.append({"prompt": question, "completion": answer + MARKER, "label": True})
        rows.append({"prompt": question, "completion": answer, "label": False})
    rng.shuffle(rows)
    return rows


def chat_kto(row: dict) -> dict:
    return {
        "prompt": [{"role": "user", "content": row["prompt"]}],
        "completion": [{"role": "assistant", "content": row["completion"]}],
        "label": row["label"],
    }


def write(name: str, rows: list[dict]) -> None:
    with open(HERE / name, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print(f"{name}: {len(rows)} rows")


def main() -> None:
    rng = random.Random(SEED)
    train, heldout = split(rng)
    write("preference_train.jsonl", [pair_row(q, a) for _, q, a in train])
    write("preference_heldout.jsonl", [pair_row(q, a) for _, q, a in heldout])
    kto_train, kto_heldout = kto_rows(train, rng), kto_rows(heldout, rng)
    write("kto_train.jsonl", kto_train)
    write("kto_heldout.jsonl", kto_heldout)
    write("kto_chat_train.jsonl", [chat_kto(r) for r in kto_train])
    write("kto_chat_heldout.jsonl", [chat_kto(r) for r in kto_heldout])


if __name__ == "__main__":
    main()
