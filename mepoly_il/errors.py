"""The one error type for user mistakes.

Raise :class:`UserError` for anything the user can fix (a bad path, a wrong flag, a dataset that does not match a
checkpoint). ``mepoly_il.cli`` turns it into a one-line message and a non-zero exit, without a traceback. Bugs keep
raising normal exceptions.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in user input. The message names the file or value, the problem, and the fix."""
