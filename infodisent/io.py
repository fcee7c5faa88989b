"""File helpers: atomic writes (a temporary name renamed into place), JSON, checksums.

Infrastructure, floor 1 (tests/test_layout.py): it imports only :mod:`infodisent.errors`."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import CorruptFileError


def _file_mode() -> int:
    """The mode ``open()`` gives a new file under the process's umask (mkstemp's temporaries are 0600)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically, with the
    permissions an ordinary new file would have (so that colleagues can read a shared run).

    Args:
        path: the file to write; its folder is created if missing.
    Returns:
        A context manager yielding the temporary path to write to; on an error the temporary file is
        removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically, UTF-8 encoded.

    Args:
        path: the file to write (replaced if it exists).
        text: its whole content."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write an object as indented JSON atomically, keys in their given order.

    Args:
        path: the file to write (replaced if it exists).
        obj: a JSON-serialisable object."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Save an array in NumPy's ``.npy`` format atomically.

    Args:
        path: the file to write (replaced if it exists).
        array: the array saved."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


_PACKAGE = str(Path(__file__).resolve().parent)


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` attributed to the first caller outside this package, so that the line a
    warning shows is the user's (``train_run(cfg)``), not the library's own ``warn(...)``.

    Args:
        message: the warning's text.
        category: the warning class. Default ``UserWarning``."""
    level, frame = 2, sys._getframe(1)
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; :class:`CorruptFileError` names a file that is cut short or invalid.

    Args:
        path: the JSON file.
    Returns:
        The parsed object."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        reason = "empty file" if not data.strip() else f"invalid JSON: {e}"
        raise CorruptFileError(path, reason) from e


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks.

    Args:
        path: the file hashed.
    Returns:
        The digest as a hexadecimal string."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
