"""Write the quickstart dataset: date normalization, as Alpaca rows.

    python examples/data/make_quickstart_data.py

Each row asks for one date, written the way people write dates ("Mar 5th 2021",
"Friday, 5 March 2021", "the 5th of March, 2021", ...), in ISO 8601 form ("2021-03-05").
The answer is exactly checkable, and every held-out date is a different day, so no answer
repeats.

Two files are written next to this script (deterministic: fixed seed, stdlib only):
  quickstart_train.csv    rows to fine-tune on
  quickstart_heldout.csv  rows to score on; their (year, month, day) triples, and hence
                          their inputs and answers, never occur in the training rows

Why CSV and not JSON Lines: the JSON reader under `datasets` (pyarrow) turns a column whose
strings all look like dates ("2021-03-05") into timestamps, and tuner then rejects the rows
(`field 'output' must be a string, got datetime`). The CSV reader keeps them as text.
"""

from __future__ import annotations

import csv
import datetime as dt
import random
from pathlib import Path

SEED = 1234
N_TRAIN = 600
N_HELDOUT = 200
FIRST_YEAR, LAST_YEAR = 1900, 2099

INSTRUCTION = "Convert the date to ISO 8601 format (YYYY-MM-DD). Answer with the date only."

MONTHS = [
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def ordinal(n: int) -> str:
    """1 -> 1st, 2 -> 2nd, 11 -> 11th, 22 -> 22nd."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def short(month: str) -> str:
    return month[:3]


# Human ways to write a date. None of them is ambiguous (no 03/05/2021: is it March or May?).
FORMATS = [
    lambda d, m, w: f"{m} {d.day}, {d.year}",                      # March 5, 2021
    lambda d, m, w: f"{d.day} {m} {d.year}",                       # 5 March 2021
    lambda d, m, w: f"{short(m)} {ordinal(d.day)} {d.year}",       # Mar 5th 2021
    lambda d, m, w: f"{w}, {d.day} {m} {d.year}",                  # Friday, 5 March 2021
    lambda d, m, w: f"{d.year}, {m} the {ordinal(d.day)}",         # 2021, March the 5th
    lambda d, m, w: f"the {ordinal(d.day)} of {m}, {d.year}",      # the 5th of March, 2021
    lambda d, m, w: f"{w}, {m} {d.day}, {d.year}",                 # Friday, March 5, 2021
    lambda d, m, w: f"{d.day}-{short(m)}-{d.year}",                # 5-Mar-2021
    lambda d, m, w: f"{short(m)}. {d.day}, {d.year}",              # Mar. 5, 2021
    lambda d, m, w: f"{m.upper()} {d.day} {d.year}",               # MARCH 5 2021
    lambda d, m, w: f"{ordinal(d.day)} {m} {d.year}",              # 5th March 2021
    lambda d, m, w: f"{d.year} {short(m)} {d.day}",                # 2021 Mar 5
]


def random_date(rng: random.Random) -> dt.date:
    first = dt.date(FIRST_YEAR, 1, 1).toordinal()
    last = dt.date(LAST_YEAR, 12, 31).toordinal()
    return dt.date.fromordinal(rng.randint(first, last))


def row(date: dt.date, rng: random.Random) -> dict[str, str]:
    fmt = rng.choice(FORMATS)
    text = fmt(date, MONTHS[date.month - 1], WEEKDAYS[date.weekday()])
    return {"instruction": INSTRUCTION, "input": text, "output": date.isoformat()}


def make() -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    rng = random.Random(SEED)
    heldout_dates: set[dt.date] = set()
    while len(heldout_dates) < N_HELDOUT:
        heldout_dates.add(random_date(rng))
    heldout = [row(d, rng) for d in sorted(heldout_dates)]
    rng.shuffle(heldout)

    train_dates: set[dt.date] = set()
    while len(train_dates) < N_TRAIN:
        d = random_date(rng)
        if d not in heldout_dates:
            train_dates.add(d)
    train = [row(d, rng) for d in sorted(train_dates)]
    rng.shuffle(train)
    return train, heldout


def check(train: list[dict[str, str]], heldout: list[dict[str, str]]) -> None:
    """The held-out set must be a fair test: nothing of it seen in training, no dominant answer."""
    train_inputs = {r["input"] for r in train}
    train_outputs = {r["output"] for r in train}
    assert not any(r["input"] in train_inputs for r in heldout), "a held-out input occurs in training"
    assert not any(r["output"] in train_outputs for r in heldout), "a held-out answer occurs in training"
    answers = [r["output"] for r in heldout]
    top_share = max(answers.count(a) for a in set(answers)) / len(answers)
    assert top_share <= 0.10, f"one answer covers {top_share:.0%} of the held-out rows"


def write(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["instruction", "input", "output"])
        writer.writeheader()
        writer.writerows(rows)


def main() -> None:
    train, heldout = make()
    check(train, heldout)
    here = Path(__file__).resolve().parent
    write(here / "quickstart_train.csv", train)
    write(here / "quickstart_heldout.csv", heldout)
    print(f"wrote {len(train)} training rows and {len(heldout)} held-out rows to {here}")


if __name__ == "__main__":
    main()
