"""User-facing errors and the checks that raise them: one line naming the bad value and what is
accepted."""

from __future__ import annotations

import re
from collections.abc import Collection

import numpy as np


class UserError(ValueError):
    """Bad input from a user. The CLI prints its message on one line and exits with code 2;
    a library caller catches it as the ``ValueError`` it is."""

    exit_code = 2


def require(condition: bool, message: str) -> None:
    """Raises ``UserError(message)`` unless ``condition``."""
    if not condition:
        raise UserError(message)


def check_choice(name: str, value: object, accepted: Collection[object]) -> None:
    """``UserError`` unless ``value`` is one of ``accepted`` and of the same type as them (so
    neither ``True`` nor ``2.0`` passes for ``2``, nor ``1`` for ``"1"``)."""
    kinds = {type(choice) for choice in accepted}
    plain = value.item() if isinstance(value, np.generic) else value  # np.str_, np.int64, ...
    if type(plain) not in kinds or plain not in accepted:
        raise UserError(
            f"{name}={value!r} is not supported; accepted: {', '.join(map(str, accepted))}"
        )


def first_line(error: BaseException) -> str:
    """The first line of a library's error message, without terminal colour codes, for a
    UserError that explains it."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
    return text.splitlines()[0] if text else repr(error)
