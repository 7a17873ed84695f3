"""The command line's one error path: a user error is one line on stderr and exit status 2.

Every command runs inside :class:`FivewsiGroup.invoke`, which calls :func:`user_error_message`
on anything a command raises. A user error — a :class:`~fivewsi.errors.FivewsiError`, settings
that fail validation, a path that does not exist — is printed as ``error: <message>`` and the
process exits 2, never with a traceback. Anything else is a bug and keeps its traceback.
Commands exit 1 themselves when some items (slides, reports, cells) failed and the rest ran.

Example:
    >>> from fivewsi.errors import RunError
    >>> user_error_message(RunError("runs/x is not a fivewsi run folder"))
    'runs/x is not a fivewsi run folder'
    >>> user_error_message(ZeroDivisionError()) is None
    True
"""

from __future__ import annotations

from typing import Any

from fivewsi.errors import FivewsiError

#: Exit status for bad input or settings (click uses 2 for usage errors too).
USAGE_ERROR = 2
#: Exit status when some items failed and the others were done.
ITEMS_FAILED = 1
#: Operating-system errors that mean "the path you gave cannot be used".
_PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def validation_message(exc: Any) -> str:
    """One line for a pydantic ``ValidationError``: each failing setting and why.

    Input values are left out: they may be long, or secrets.
    """
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()))
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        problems.append(f"{where}: {message}" if where else message)
    return "invalid settings: " + "; ".join(problems)


def user_error_message(exc: BaseException) -> str | None:
    """The one-line message for a user error, or None when ``exc`` is not one (a bug)."""
    if isinstance(exc, FivewsiError):
        return _one_line(str(exc))
    if type(exc).__name__ == "ValidationError" and type(exc).__module__.startswith("pydantic"):
        return _one_line(validation_message(exc))
    if isinstance(exc, _PATH_ERRORS):
        text = exc.strerror and exc.filename and f"{exc.filename}: {exc.strerror}"
        return _one_line(text or str(exc))
    return None


def _one_line(text: str) -> str:
    return " ".join(text.split())
