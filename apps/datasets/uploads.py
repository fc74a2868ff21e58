"""Streaming multipart upload: the file part is encrypted as it arrives, so neither memory nor
the disk ever holds it in plaintext, whatever its size.

The handler is installed before authentication (Django's CSRF check reads multipart bodies), when
the tenant is not known yet, so the spool is sealed under a random key that lives only in this
request's memory. Once the caller is authorised, ``restage`` moves the bytes under the tenant's
data key into object storage (decrypt and re-encrypt, streaming)."""

from __future__ import annotations

import os
import tempfile
import uuid
from typing import IO, Any, BinaryIO, cast

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler

from apps.common.errors import PayloadTooLarge
from apps.datasets.storage import EncryptedUpload, Stored
from workers.crypto import DecryptingReader, EncryptingWriter

_SPOOL_CONTEXT = b"cohort/multipart-spool"


class SpooledUpload(UploadedFile):
    """What lands in ``request.FILES``: an encrypted spool and its ephemeral key."""

    def __init__(self, name: str, spool: IO[bytes], key: bytes, size: int, content_type: str | None) -> None:
        super().__init__(file=spool, name=name, content_type=content_type, size=size)
        self.spool, self.key = spool, key

    def restage(self, tenant_id: int) -> Stored:
        """Re-encrypt under the tenant's data key into object storage; the spool is closed."""
        sink = EncryptedUpload(tenant_id, "upload_part", f"mp-{uuid.uuid4().hex}", size_hint=self.size or 0)
        try:
            self.spool.seek(0)
            reader = DecryptingReader(cast(BinaryIO, self.spool), self.key, _SPOOL_CONTEXT)
            while block := reader.read(1024 * 1024):
                sink.write(block)
            return sink.finish()
        except BaseException:
            sink.abort()
            raise
        finally:
            self.discard()

    def discard(self) -> None:
        self.spool.close()


class SpoolingUploadHandler(FileUploadHandler):
    """Only the ``file`` field is accepted; any other file field is refused."""

    def __init__(self, request: Any, *, max_bytes: int) -> None:
        super().__init__(request)
        self.max_bytes = max_bytes
        self.writer: EncryptingWriter | None = None
        self.spool: IO[bytes] | None = None
        self.key = os.urandom(32)
        self.received = 0
        self.files = 0

    def new_file(self, field_name: str, file_name: str, *args: Any, **kwargs: Any) -> None:
        super().new_file(field_name, file_name, *args, **kwargs)
        self.files += 1
        if field_name != "file" or self.files > 1:
            from rest_framework.exceptions import ValidationError

            self.upload_interrupted()
            raise ValidationError({"file": ["Send exactly one file, in the field named 'file'."]})
        os.makedirs(settings.COHORT_TMP_DIR, mode=0o700, exist_ok=True)
        self.spool = tempfile.TemporaryFile(dir=settings.COHORT_TMP_DIR)  # noqa: SIM115 (closed by discard)
        self.writer = EncryptingWriter(self.spool, self.key, _SPOOL_CONTEXT)
        self.received = 0

    def receive_data_chunk(self, raw_data: bytes, start: int) -> None:
        assert self.writer is not None
        self.received += len(raw_data)
        if self.received > self.max_bytes:
            self.upload_interrupted()
            raise PayloadTooLarge(f"Files are limited to {self.max_bytes} bytes.")
        self.writer.write(raw_data)
        return None

    def file_complete(self, file_size: int) -> UploadedFile | None:
        assert self.writer is not None
        assert self.spool is not None
        self.writer.close()
        upload = SpooledUpload(self.file_name or "upload", self.spool, self.key, self.received, self.content_type)
        self.writer, self.spool = None, None
        return upload

    def upload_interrupted(self) -> None:
        if self.spool is not None:
            self.spool.close()
        self.writer, self.spool = None, None
