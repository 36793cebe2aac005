"""User-facing errors.

A `UserError` is something the user can fix (a config key, a data row, a missing file).
The CLI prints its message and exits with code 2, without a traceback. Any other
exception escaping tuner is a bug in tuner.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """An error the user can fix. `str(err)` is the complete message."""

    exit_code = 2


def did_you_mean(word: str, choices: Iterable[str], n: int = 3) -> str:
    """' Did you mean 'x'?' for the closest choices, or '' when nothing is close."""
    matches = difflib.get_close_matches(str(word), list(choices), n=n, cutoff=0.6)
    if not matches:
        # Case-only typos (e.g. llamaforcausallm) are common for class names.
        lowered = {c.lower(): c for c in choices}
        if str(word).lower() in lowered:
            matches = [lowered[str(word).lower()]]
    if not matches:
        return ""
    return " Did you mean " + " or ".join(f"'{m}'" for m in matches) + "?"
