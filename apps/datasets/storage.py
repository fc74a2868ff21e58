"""Encrypted object storage for datasets: every byte written through here is AES-256-GCM framed
under the tenant's data key (``workers.crypto``), with AAD binding tenant, object kind and id.

Storage is Django's ``storages["objects"]``: the local filesystem by default (mode 0600 files),
S3-compatible object storage by configuration. Plaintext exists only in ``workspace()``
folders under ``COHORT_TMP_DIR``, which are removed when the block ends.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, BinaryIO, cast

from django.conf import settings
from django.core.files import File
from django.core.files.storage import Storage, storages

from apps.vault import services as vault
from apps.vault.models import DataKey
from workers.crypto import DecryptingReader, EncryptingWriter, derive_key, object_context


def object_storage() -> Storage:
    return storages["objects"]


def context_for(tenant_id: int, kind: str, object_id: object) -> bytes:
    return object_context(tenant_id=tenant_id, kind=kind, object_id=str(object_id))


@contextmanager
def workspace() -> Iterator[str]:
    """A private temporary folder (0700) for plaintext being processed; always removed."""
    os.makedirs(settings.COHORT_TMP_DIR, mode=0o700, exist_ok=True)
    path = tempfile.mkdtemp(prefix="work-", dir=settings.COHORT_TMP_DIR)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class Stored:
    name: str
    object_id: str
    key: DataKey
    plaintext_bytes: int
    stored_bytes: int
    sha256: str
    frames: int


class EncryptedUpload:
    """An encrypting sink that becomes a stored object on ``finish()``: the ciphertext is spooled
    to a temporary file (encrypted, so nothing readable touches the disk) and then saved."""

    def __init__(
        self,
        tenant_id: int,
        kind: str,
        object_id: object,
        *,
        size_hint: int = 0,
        sealed_under: tuple[DataKey, bytes] | None = None,
        digest: bool = True,
    ) -> None:
        """``sealed_under``: (the data key it derives from, a key of this object's own) instead of
        the tenant's active data key: see :func:`object_key`. ``digest``: keep the content SHA-256."""
        frame = settings.COHORT_ENCRYPTION_FRAME_BYTES
        headroom = max(1024, size_hint // frame + 64)
        self.tenant_id, self.kind, self.object_id = tenant_id, kind, object_id
        if sealed_under is None:
            self.key = vault.active_key(tenant_id, DataKey.Purpose.DATA, headroom=headroom)
            material, reserve = vault.material(self.key), vault.reserver(self.key)
        else:  # a key used for this object only: no usage counter to keep
            self.key, material, reserve = sealed_under[0], sealed_under[1], None
        os.makedirs(settings.COHORT_TMP_DIR, mode=0o700, exist_ok=True)
        # Closed by finish() or abort(): the spool outlives this method by design.
        self._spool: IO[bytes] = tempfile.TemporaryFile(dir=settings.COHORT_TMP_DIR)  # noqa: SIM115
        self.writer = EncryptingWriter(
            self._spool,
            material,
            context_for(tenant_id, kind, object_id),
            frame_size=frame,
            reserve=reserve,
            digest=digest,
        )

    def write(self, data: bytes) -> int:
        return self.writer.write(data)

    def finish(self) -> Stored:
        self.writer.close()
        self._spool.seek(0)
        name = f"t{self.tenant_id}/{self.kind}/{self.object_id}-{secrets.token_hex(8)}.enc"
        try:
            saved = object_storage().save(name, File(self._spool, name=name))
        finally:
            self._spool.close()
        return Stored(
            name=saved,
            object_id=str(self.object_id),
            key=self.key,
            plaintext_bytes=self.writer.plaintext_bytes,
            stored_bytes=self.writer.ciphertext_bytes,
            sha256=self.writer.sha256,
            frames=self.writer.frames,
        )

    def abort(self) -> None:
        self._spool.close()


def open_decrypted(
    tenant_id: int, kind: str, object_id: object, name: str, key: DataKey | None, *, material: bytes | None = None
) -> DecryptingReader:
    """A seekable plaintext reader over a stored object (decrypts frame by frame), under ``key`` or,
    for an object sealed with a key of its own (:func:`object_key`), that key's ``material``."""
    secret = material if material is not None else vault.material(cast(DataKey, key))
    raw = object_storage().open(name, "rb")
    try:  # the reader owns the file from here: closing it closes the file
        return DecryptingReader(cast(BinaryIO, raw), secret, context_for(tenant_id, kind, object_id), close_source=True)
    except BaseException:
        raw.close()
        raise


def object_key(data_key_material: bytes, salt: bytes, context: bytes) -> bytes:
    """A key of one object's own, derived (HKDF) from a data key's material and a random salt kept
    with the object: readable only while that data key exists (a crypto-shred ends it too)."""
    return derive_key(data_key_material, salt, b"cohort.object/1|" + context)


def delete_object(name: str) -> None:
    if name:
        object_storage().delete(name)
