"""The one way restore3d writes a file: to a temporary name beside it, renamed when complete.

An interrupted or failed write never leaves a half-written file under the
final name, and the result gets the permissions an ordinary write would give
(those of the file it replaces, else the user's umask), not the 0600 of a
temporary file.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write", "check_writable"]


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_write(path):
    """Yield a temporary path in ``path``'s folder (same extension); on success rename it to ``path``.

    On an exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ValueError(f"{path}: folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix="".join(path.suffixes) or ".tmp", dir=folder)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        mode = path.stat().st_mode & 0o7777 if path.exists() else _default_mode()
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def check_writable(path) -> None:
    """Raise ``ValueError`` now if ``path`` cannot be written (missing or read-only folder), before any work."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ValueError(f"{path}: folder {folder} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".restore3d-check.", dir=folder)
    except OSError as exc:
        raise ValueError(f"{path}: cannot write into {folder} ({exc.strerror}); choose a writable folder") from None
    os.close(fd)
    os.unlink(tmp)
