"""User-facing errors.

`UserError` is raised for anything the user can fix (a bad flag value, a missing
file, an unreachable hub). The command line turns it into one line on stderr,
``error: <message>``, and exit status 2. It is not for programming errors: those
keep their traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; the message says what to do."""


def require(condition: bool, message: str) -> None:
    """Raise `UserError(message)` unless `condition` holds."""
    if not condition:
        raise UserError(message)
