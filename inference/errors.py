"""The one exception type for problems a user can cause and fix."""

from __future__ import annotations


class WbcvError(Exception):
    """A problem with the user's input (file, manifest, model, option).

    The message names the file, row or key, what was wrong and what was expected; the command
    line prints it without a traceback and exits with status 2.
    """
