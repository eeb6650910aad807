"""User-facing errors: one line naming the bad value and what is accepted."""


class UserError(Exception):
    """Bad input from a user. The CLI prints its message on one line and exits with code 2."""

    exit_code = 2
