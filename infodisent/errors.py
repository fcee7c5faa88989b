"""One base for every error the toolkit raises on purpose, so that a caller (the CLI, a notebook, a
service) can tell a user's mistake (a wrong path, a value out of range, a damaged file, a run of
another backbone), which gets a message, from a bug, which gets a traceback. Each error also keeps
the built-in base it had (``ValueError``, ``FileNotFoundError``, ...), so ``except ValueError`` still works.
The bottom floor (tests/test_layout.py): it imports nothing of the package.

Example:
    >>> try:
    ...     infodisent.open_run("runs/nowhere")
    ... except infodisent.InfodisentError as e:
    ...     print(e)                    # what is wrong and what to do
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path


class InfodisentError(Exception):
    """Base of the errors raised on purpose: each message says what is wrong and what to do."""


class InputError(InfodisentError, ValueError):
    """A value or argument out of range, unknown or inconsistent with the others (the message names it)."""


class CorruptFileError(InfodisentError, ValueError):
    """A file that exists but cannot be read back: cut short by a crash, or overwritten.

    Args:
        path: the damaged file, kept as :attr:`path`.
        reason: what is wrong with it (``"empty file"``, ``"invalid JSON: ..."``), kept as :attr:`reason`.
        hint: what to do about it, appended to the message. Default ``""``: none."""

    def __init__(self, path: str | PathLike[str], reason: str, hint: str = ""):
        self.path, self.reason, self.hint = Path(path), reason, hint
        message = f"{path} is damaged or incomplete ({reason})"
        super().__init__(f"{message}. {hint}" if hint else message)


__all__ = ["CorruptFileError", "InfodisentError", "InputError"]
