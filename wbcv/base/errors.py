"""The one exception type for problems a user can cause and fix, and the helpers its messages use.

Every message that quotes something a user gave (a value, a key, a cell of a file) quotes it
through :func:`shown`, so a hostile or broken input (a megabyte-long value, a structure that
expands to millions of items) cannot turn into a megabyte-long message; lists of problems go
through :func:`listing`, which shows at most :data:`MAX_LISTED` of them and counts the rest.
"""

from __future__ import annotations

import difflib
import reprlib
from collections.abc import Iterable, Sequence
from typing import Final

#: Longest quotation of one user-given value in an error message (characters, before the note of
#: how long the value really was).
MAX_QUOTED_CHARS: Final[int] = 80
#: Most problems one message lists; the rest are counted ("... and 12 more problems").
MAX_LISTED: Final[int] = 50
#: Words longer than this get no "did you mean" suggestion (difflib is quadratic in the worst case).
_MAX_SUGGEST_CHARS: Final[int] = 200


class WbcvError(Exception):
    """A problem with the user's input (file, manifest, model, option).

    The message names the file, row or key, what was wrong and what was expected; the command
    line prints it without a traceback and exits with status 2.
    """


def _make_repr() -> reprlib.Repr:
    r = reprlib.Repr()
    r.maxlevel = 3
    r.maxlist = r.maxtuple = r.maxset = r.maxfrozenset = r.maxdeque = 5
    r.maxdict = 4
    r.maxstring = 30
    r.maxlong = 30
    r.maxother = 30
    return r


_REPR: Final[reprlib.Repr] = _make_repr()


def shown(value: object, limit: int = MAX_QUOTED_CHARS) -> str:
    """``repr(value)`` for an error message, at most about ``limit`` characters.

    A long text keeps its beginning and says how long it was (``'aaaa…' (1,048,576 characters)``);
    lists and mappings show their first items only (``reprlib``), so even a structure that an alias
    chain made enormous is quoted in bounded time and space.
    """
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        return f"{value[:limit]!r}… ({len(value):,} characters)"
    if isinstance(value, bytes):
        if len(value) <= limit:
            return repr(value)
        return f"{value[:limit]!r}… ({len(value):,} bytes)"
    try:
        text = _REPR.repr(value)
    except ValueError:  # e.g. an int with more digits than Python will print
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "…"


def clipped(text: str, limit: int = MAX_QUOTED_CHARS) -> str:
    """``text`` itself (not its repr), cut to ``limit`` characters with a note of its real length."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


def listing(problems: Sequence[str], limit: int = MAX_LISTED) -> list[str]:
    """The first ``limit`` problems and, when there are more, one line counting the rest."""
    if len(problems) <= limit:
        return list(problems)
    rest = len(problems) - limit
    return [*problems[:limit], f"… and {rest:,} more problem{'s' if rest > 1 else ''} (fix the ones above first)"]


def suggest(word: str, choices: Iterable[str], cutoff: float = 0.6) -> str:
    """' (did you mean 'x'?)' for the closest valid name, or '' when nothing is close."""
    if len(word) > _MAX_SUGGEST_CHARS:
        return ""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
    return f" (did you mean {close[0]!r}?)" if close else ""
