"""Writes examples/pretrain/corpus/: a small synthetic corpus (two JSON Lines shards of short
documents) for the continued pre-training example. Deterministic: the same files every run.

    python examples/pretrain/make_corpus.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent / "corpus"
TOWNS = ["Arden", "Belmoor", "Cresthollow", "Dunmere", "Eastwick", "Fallowby", "Greyford", "Hartsvale"]
GOODS = ["wool", "salt", "timber", "barley", "copper", "honey", "cider", "linen"]
RIVERS = ["the Lune", "the Ashwater", "the Brede", "the Calder"]
MONTHS = ["March", "April", "May", "June", "July", "August", "September", "October"]


def document(rng: random.Random, number: int) -> str:
    town, other = rng.sample(TOWNS, 2)
    good, river, month = rng.choice(GOODS), rng.choice(RIVERS), rng.choice(MONTHS)
    people = rng.randint(300, 9000)
    lines = [
        f"{town} is a market town on {river}, about {rng.randint(4, 40)} miles from {other}.",
        f"It has some {people:,} inhabitants, and its fair is held every {month}.",
        f"The town is known for its {good}, which traders carry downriver to {other}.",
    ]
    for _ in range(rng.randint(0, 4)):
        lines.append(rng.choice([
            f"In a good year the fair sells {rng.randint(20, 400)} loads of {good}.",
            f"The bridge over {river} at {town} was rebuilt in {rng.randint(1650, 1890)}.",
            f"A road from {town} to {other} was laid in {rng.randint(1700, 1900)}.",
            f"The people of {town} still call the {month} fair the Old Fair.",
        ]))
    return f"Record {number}. " + " ".join(lines)


def main() -> None:
    rng = random.Random(19)
    OUT.mkdir(exist_ok=True)
    number = 0
    for shard in range(2):
        with open(OUT / f"part-{shard:05d}.jsonl", "w", encoding="utf-8") as fh:
            for _ in range(300):
                number += 1
                fh.write(json.dumps({"text": document(rng, number)}) + "\n")


if __name__ == "__main__":
    main()
