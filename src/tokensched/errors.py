"""User-facing errors.

Anything a user can get wrong (a file, a flag, a config field) raises :class:`UserError` with one line that
names what is wrong and where. The command line prints that line and exits with status 2; it never shows a
traceback for a ``UserError``.
"""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """A mistake in the user's input. ``str(err)`` is a complete one-line message."""

    exit_code = 2

    def __init__(self, message: str, *, where: str | None = None) -> None:
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


def read_user_text(path: Path, what: str, encoding: str = "utf-8") -> str:
    """The text of a file the user named; a missing or unreadable one is a one-line UserError naming ``what``."""
    try:
        return path.read_text(encoding=encoding)
    except FileNotFoundError:
        raise UserError(f"no such {what}", where=str(path)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {what}: {e}", where=str(path)) from None
