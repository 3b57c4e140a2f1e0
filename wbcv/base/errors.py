"""The one exception type for problems a user can cause and fix."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class WbcvError(Exception):
    """A problem with the user's input (file, manifest, model, option).

    The message names the file, row or key, what was wrong and what was expected; the command
    line prints it without a traceback and exits with status 2.
    """


def suggest(word: str, choices: Iterable[str], cutoff: float = 0.6) -> str:
    """' (did you mean 'x'?)' for the closest valid name, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
    return f" (did you mean {close[0]!r}?)" if close else ""
