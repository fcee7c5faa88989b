"""One base for every error the toolkit raises on purpose, so that a caller (the CLI, a notebook, a
service) can tell a user's mistake (a wrong path, a value out of range, a damaged file, a run of
another backbone), which gets a message, from a bug, which gets a traceback. Each error also keeps
the built-in base it had (``ValueError``, ``FileNotFoundError``, ...), so ``except ValueError`` still works.

Example:
    >>> try:
    ...     infodisent.open_run("runs/nowhere")
    ... except infodisent.InfodisentError as e:
    ...     print(e)                    # what is wrong and what to do
"""


class InfodisentError(Exception):
    """Base of the errors raised on purpose: each message says what is wrong and what to do."""


class InputError(InfodisentError, ValueError):
    """A value or argument out of range, unknown or inconsistent with the others (the message names it)."""


__all__ = ["InfodisentError", "InputError"]
