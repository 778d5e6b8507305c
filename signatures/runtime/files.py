"""Crash-safe file writes and writer locks for the repository and the store."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os

from _trim.errors import InvalidInput


def read_json(path, what: str = ""):
    """A JSON file's content; ValueError naming the file (and ``what`` it is)
    when it cannot be read or parsed."""
    path = os.fspath(path)
    where = f"{what} {path}" if what else path
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except OSError as exc:
        raise InvalidInput(f"{where}: cannot read: {exc.strerror}") from exc
    except ValueError as exc:
        raise InvalidInput(f"{where}: not valid JSON: {exc}") from exc


def fsync_dir(path) -> None:
    fd = os.open(os.fspath(path), os.O_RDONLY)
    try:
        os.fsync(fd)  # makes a rename inside the directory survive a crash
    finally:
        os.close(fd)


def atomic_write(path, data: bytes) -> None:
    """Write ``data`` so that readers see the old file or the new one, never a part.

    A writer killed at any point leaves at most a stray ``.*.tmp.*`` file,
    which readers never look at.
    """
    path = os.fspath(path)
    d = os.path.dirname(path) or "."
    tmp = os.path.join(d, f".{os.path.basename(path)}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename is not None:
            raise
        # A write or fsync names no file (ENOSPC, EIO): say which one.
        raise OSError(exc.errno, exc.strerror, path) from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    fsync_dir(d)


@contextlib.contextmanager
def locked(lock_path):
    """An exclusive flock on ``lock_path`` for writers; the kernel drops it if
    the holder dies, so a killed writer never wedges the others."""
    fd = os.open(os.fspath(lock_path), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
