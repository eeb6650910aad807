"""User-facing errors: one line naming the bad value and what is accepted."""

import re


class UserError(Exception):
    """Bad input from a user. The CLI prints its message on one line and exits with code 2."""

    exit_code = 2


def first_line(error: BaseException) -> str:
    """The first line of a library's error message, without terminal colour codes, for a
    UserError that explains it."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
    return text.splitlines()[0] if text else repr(error)
