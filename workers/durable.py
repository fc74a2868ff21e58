"""Durable file operations shared by the keyring, the checkpoints, weights and exports (pure Python)."""

from __future__ import annotations

import os
import secrets
from contextlib import suppress
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make a create or rename durable: the directory entry lives in the directory, not the file."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` all or nothing: an O_EXCL temp file beside it, fsync, rename,
    then fsync the directory. A crash leaves the old file (or none) and at most a ``.tmp``."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)
