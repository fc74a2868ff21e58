"""Hand prepared tensors to data-parallel ranks without plaintext on disk.

The job's process decrypts and prepares the data once; each rank process (started by
``workers.training.distributed``) needs the same :class:`Prepared`. It is written once with
``torch.save`` through an :class:`EncryptingWriter` under a fresh one-time key into the job's private
temporary folder; the key travels to the ranks only in process memory (the picklable factory), so
the file on disk is ciphertext, and it is deleted with the folder when the job ends.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, cast

import torch

from workers.crypto import DecryptingReader, EncryptingWriter
from workers.training.data import Prepared

_CONTEXT = b"cohort/prepared-handoff/v1"


def save_prepared(prepared: Prepared, directory: str | os.PathLike[str]) -> partial[Prepared]:
    """Write ``prepared`` encrypted; return a picklable factory that reads it back in a rank."""
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    path = directory / f"prepared-{secrets.token_hex(8)}.enc"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as sink, EncryptingWriter(sink, key, _CONTEXT) as writer:
        torch.save(asdict(prepared), cast(BinaryIO, writer))
    return partial(load_prepared, str(path), key.hex())


def load_prepared(path: str, key_hex: str) -> Prepared:
    with open(path, "rb") as raw, DecryptingReader(raw, bytes.fromhex(key_hex), _CONTEXT) as reader:
        fields: dict[str, Any] = torch.load(cast(BinaryIO, reader), weights_only=True)
    return Prepared(**fields)
