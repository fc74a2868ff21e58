"""Uploads: resumable sessions (parts with byte ranges), single-request uploads, expiry."""

from __future__ import annotations

import hashlib
import os
import uuid
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.audit.services import audit_record, audited_change
from apps.common.exceptions import Conflict, Invalid, RangeNotSatisfiable, Unprocessable
from apps.datasets.models import Dataset, DatasetVersion, UploadPart, UploadSession
from apps.datasets.services.common import ON_ROW_ERROR, PART_KIND, _drop_parts, _reject, _user_or_none
from apps.datasets.services.quotas import check_quota
from apps.datasets.services.versions import _start_version
from apps.datasets.storage import EncryptedUpload, Stored, delete_object
from apps.tenancy.models import Tenant
from apps.tenancy.scope import platform_scope
from workers.schema import DatasetSchema, SchemaError


def expire_uploads() -> int:
    """Drop the stored chunks of upload sessions past their expiry (audited per session)."""
    from apps.tenancy.scope import tenant_scope

    with platform_scope():
        due = list(
            UploadSession.all_tenants.filter(
                status=UploadSession.Status.OPEN, expires_at__lte=timezone.now()
            ).values_list("tenant_id", "pk")
        )
    for tenant_id, pk in due:
        with transaction.atomic(), tenant_scope(tenant_id):
            session = UploadSession.objects.select_for_update().get(pk=pk)
            if session.status != UploadSession.Status.OPEN:
                continue
            with audited_change():
                _drop_parts(session)
                session.status = UploadSession.Status.EXPIRED
                session.save(update_fields=["status"])
                audit_record(action="upload.expired", tenant=tenant_id, target=session)
    return len(due)


def clean_options(raw: dict[str, Any]) -> dict[str, Any]:
    """Validate upload options (label, task, schema, on_row_error, format, encoding, delimiter)."""
    errors: dict[str, list[str]] = {}
    opts: dict[str, Any] = {}
    for key in ("label", "task", "format", "encoding", "delimiter"):
        value = raw.get(key)
        if value in (None, ""):
            continue
        if not isinstance(value, str) or len(value) > 200:
            errors.setdefault(key, []).append("Must be a string of at most 200 characters.")
        else:
            opts[key] = value
    if opts.get("format") not in (None, "csv", "tsv", "parquet", "jsonl", "zip"):
        errors.setdefault("format", []).append("One of csv, tsv, parquet, jsonl, zip.")
    if "delimiter" in opts and opts["delimiter"] not in (",", ";", "\t", "|"):
        errors.setdefault("delimiter", []).append("One of , ; tab |.")
    if "encoding" in opts:
        import codecs

        try:
            codecs.lookup(opts["encoding"])
        except LookupError:
            errors.setdefault("encoding", []).append("Unknown encoding.")
    on_err = raw.get("on_row_error", "reject") or "reject"
    if on_err not in ON_ROW_ERROR:
        errors.setdefault("on_row_error", []).append("One of reject, skip.")
    opts["on_row_error"] = on_err
    schema = raw.get("schema")
    if schema not in (None, "", {}):
        if not isinstance(schema, dict):
            errors.setdefault("schema", []).append("Must be an object with columns, label and task.")
        else:
            try:
                parsed = DatasetSchema.from_dict(schema)
                parsed.check()
                opts["schema"] = parsed.to_dict()
            except SchemaError as exc:
                for k, v in exc.fields.items():
                    errors.setdefault(f"schema.{k}", []).extend(v)
    if opts.get("task") is not None:
        from workers.schema import TASKS

        if opts["task"] not in TASKS:
            errors.setdefault("task", []).append(f"One of {', '.join(TASKS)}.")
    if errors:
        raise Invalid(fields=errors)
    return opts


def _check_new_upload(*, tenant: Tenant, dataset: Dataset, size: int) -> None:
    """Refusals before anything is stored: a deleted dataset, a file over the limit, the quota."""
    if dataset.status != Dataset.Status.ACTIVE:
        raise Conflict("This dataset is deleted.")
    if size > settings.COHORT_DATASET_MAX_UPLOAD_BYTES:
        _reject(
            tenant,
            "too_large",
            f"Files are limited to {settings.COHORT_DATASET_MAX_UPLOAD_BYTES} bytes.",
            {"limit": settings.COHORT_DATASET_MAX_UPLOAD_BYTES, "size": size},
            action="dataset.upload_rejected",
            target=dataset,
            http_status=413,
        )
    check_quota(tenant, adding_bytes=size)


def _new_session(
    *, tenant: Tenant, dataset: Dataset, created_by: Any, filename: str, size: int, options: dict[str, Any]
) -> UploadSession:
    return UploadSession.objects.create(
        tenant=tenant,
        dataset=dataset,
        filename=os.path.basename(filename)[:255] or "upload",
        size=size,
        options=options,
        created_by=_user_or_none(created_by),
        expires_at=timezone.now() + timedelta(hours=settings.COHORT_UPLOAD_SESSION_HOURS),
    )


def upload_session_create(
    *, tenant: Tenant, dataset: Dataset, created_by: Any, filename: str, size: int, options: dict[str, Any]
) -> UploadSession:
    _check_new_upload(tenant=tenant, dataset=dataset, size=size)
    with audited_change():
        session = _new_session(
            tenant=tenant, dataset=dataset, created_by=created_by, filename=filename, size=size, options=options
        )
        audit_record(
            action="upload.created",
            tenant=tenant,
            target=session,
            details={"dataset_id": dataset.pk, "size": size},
        )
    return session


def _check_open(session: UploadSession) -> None:
    if session.status == UploadSession.Status.OPEN and session.expires_at <= timezone.now():
        raise Conflict("This upload session has expired; start a new one.")
    if session.status != UploadSession.Status.OPEN:
        raise Conflict(f"This upload session is {session.status}.")


def upload_part_put(*, tenant: Tenant, session: UploadSession, offset: int, stream: Any, length: int) -> UploadPart:
    """Store one chunk (encrypted as it arrives). A retried chunk at the same offset with the same
    bytes is accepted again (idempotent); overlapping or out-of-bounds chunks are refused."""
    _check_open(session)
    if offset < 0 or length < 1 or offset + length > session.size:
        raise RangeNotSatisfiable(
            f"A chunk must lie within the declared size ({session.size} bytes).", size=session.size
        )
    if length > settings.COHORT_UPLOAD_MAX_PART_BYTES:
        raise Unprocessable(
            code="too_large",
            message=f"Chunks are limited to {settings.COHORT_UPLOAD_MAX_PART_BYTES} bytes.",
            details={"limit": settings.COHORT_UPLOAD_MAX_PART_BYTES},
            http_status=413,
        )
    existing = UploadPart.objects.filter(session=session, offset=offset).first()
    for p in UploadPart.objects.filter(session=session).exclude(offset=offset):
        if p.offset < offset + length and offset < p.offset + p.size:
            raise Conflict(f"This chunk overlaps the stored chunk at offset {p.offset}.")
    part_id = f"{session.pk}-{offset}-{uuid.uuid4().hex[:8]}"
    up = EncryptedUpload(tenant.pk, PART_KIND, part_id, size_hint=length)
    digest = hashlib.sha256()
    received = 0
    try:
        while True:
            block = stream.read(min(1024 * 1024, length - received + 1))
            if not block:
                break
            received += len(block)
            if received > length:
                break
            digest.update(block)
            up.write(block)
    except Exception:
        up.abort()
        raise
    if received != length:
        up.abort()
        raise Unprocessable(
            code="length_mismatch",
            message=f"The chunk has {received} bytes; {length} were declared.",
            details={"declared": length, "received": received},
            http_status=400,
        )
    if existing is not None:
        up.abort()
        if existing.sha256 != digest.hexdigest() or existing.size != length:
            raise Conflict("A different chunk is already stored at this offset.")
        return existing
    stored = up.finish()
    try:
        with audited_change():
            part = UploadPart.objects.create(
                tenant=tenant,
                session=session,
                offset=offset,
                size=length,
                sha256=digest.hexdigest(),
                object_id=part_id,
                storage_name=stored.name,
                data_key=stored.key,
            )
            audit_record(
                action="upload.part_stored",
                tenant=tenant,
                target=session,
                details={"offset": offset, "size": length},
            )
    except IntegrityError:  # the same offset arrived twice at once: keep the first
        delete_object(stored.name)
        raise Conflict("Another chunk at this offset was stored at the same time; check the received ranges.")
    return part


def upload_received(session: UploadSession) -> list[tuple[int, int]]:
    """Received byte ranges, merged: [(start, end_exclusive), ...]."""
    ranges: list[tuple[int, int]] = []
    for off, size in UploadPart.objects.filter(session=session).order_by("offset").values_list("offset", "size"):
        if ranges and ranges[-1][1] == off:
            ranges[-1] = (ranges[-1][0], off + size)
        else:
            ranges.append((off, off + size))
    return ranges


def upload_abort(*, tenant: Tenant, session: UploadSession) -> UploadSession:
    _check_open(session)
    with audited_change():
        _drop_parts(session)
        session.status = UploadSession.Status.ABORTED
        session.save(update_fields=["status"])
        audit_record(action="upload.aborted", tenant=tenant, target=session)
    return session


def upload_complete(
    *, tenant: Tenant, session: UploadSession, sha256: str, created_by: Any, inline: bool | None = None
) -> DatasetVersion:
    """Check the parts cover the file and hash to ``sha256``, then create the version and process
    it: in this request when small (errors come back as 4xx), else on a worker (status processing)."""
    _check_open(session)
    ranges = upload_received(session)
    if ranges != [(0, session.size)]:
        missing = _gaps(ranges, session.size)
        raise Unprocessable(
            code="upload_incomplete",
            message="Some byte ranges have not been received.",
            details={"missing": [list(r) for r in missing[:20]], "received": [list(r) for r in ranges[:20]]},
            http_status=409,
        )
    return _start_version(
        tenant=tenant,
        dataset=session.dataset,
        make_session=lambda: session,
        expected_sha256=sha256.lower(),
        created_by=created_by,
        inline=inline,
        staged_names=list(UploadPart.objects.filter(session=session).values_list("storage_name", flat=True)),
        on_reject=lambda: _abort_session(session),
    )


def _abort_session(session: UploadSession) -> None:
    """A rejected completion: the session's chunks are gone (nothing partial is kept)."""
    UploadPart.objects.filter(session=session).delete()
    session.status = UploadSession.Status.ABORTED
    session.save(update_fields=["status"])


def _gaps(ranges: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    gaps, pos = [], 0
    for a, b in ranges:
        if a > pos:
            gaps.append((pos, a))
        pos = max(pos, b)
    if pos < size:
        gaps.append((pos, size))
    return gaps


def upload_single(
    *,
    tenant: Tenant,
    dataset: Dataset,
    created_by: Any,
    filename: str,
    staged: Stored,
    options: dict[str, Any],
    inline: bool | None = None,
) -> DatasetVersion:
    """A multipart upload whose body was already encrypted while it streamed in (``staged``).
    ``inline``: process in this call (True), on a worker (False), or by size (None). One audit
    event: the version uploaded (or the upload rejected)."""
    if staged.plaintext_bytes == 0:
        delete_object(staged.name)
        _reject(tenant, "empty_file", "The file is empty.", {}, action="dataset.upload_rejected", target=dataset)
    try:
        _check_new_upload(tenant=tenant, dataset=dataset, size=staged.plaintext_bytes)
    except BaseException:
        delete_object(staged.name)
        raise

    def make_session() -> UploadSession:
        session = _new_session(
            tenant=tenant,
            dataset=dataset,
            created_by=created_by,
            filename=filename,
            size=staged.plaintext_bytes,
            options=options,
        )
        UploadPart.objects.create(
            tenant=tenant,
            session=session,
            offset=0,
            size=staged.plaintext_bytes,
            sha256=staged.sha256,
            object_id=staged.object_id,
            storage_name=staged.name,
            data_key=staged.key,
        )
        return session

    return _start_version(
        tenant=tenant,
        dataset=dataset,
        make_session=make_session,
        expected_sha256=None,
        created_by=created_by,
        inline=inline,
        staged_names=[staged.name],
    )
