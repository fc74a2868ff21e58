"""Dataset writes: create, upload (multipart and resumable), process (validate → scan for PII →
convert → encrypt → store), de-identify by column policy, delete/purge, grants, quotas and the
privacy-budget ledger. Every change records exactly one audit event; failures are audited too.

Nothing here logs or audits a cell value: errors carry line numbers, column names and reasons.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, BinaryIO, cast

import pyarrow as pa
import pyarrow.parquet as pq
from django.conf import settings
from django.db import IntegrityError, connection, connections, transaction
from django.db.models import Sum
from django.utils import timezone

from apps.audit.services import audit_record, audited_change
from apps.common.errors import Conflict, RangeNotSatisfiable, RejectedInput
from apps.datasets.models import (
    BudgetReservation,
    Dataset,
    DatasetGrant,
    DatasetQuota,
    DatasetVersion,
    PrivacyBudget,
    UploadPart,
    UploadSession,
)
from apps.datasets.selectors import live_grants
from apps.datasets.storage import EncryptedUpload, Stored, delete_object, open_decrypted, workspace
from apps.tenancy.models import Tenant
from apps.tenancy.scope import db_alias, platform_scope
from apps.vault import services as vault
from apps.vault.models import DataKey
from workers.ingest.errors import IngestError
from workers.schema import DatasetSchema, SchemaError

logger = logging.getLogger(__name__)


class UploadRejected(Exception):
    """An upload refused by the platform itself (not by the file parser): same shape as IngestError."""

    def __init__(self, code: str, message: str, details: dict[str, Any]) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.details = code, message, details


def _rejections() -> tuple[type[IngestError], type[UploadRejected]]:
    return (IngestError, UploadRejected)


VERSION_KIND = "dataset_version"
PART_KIND = "upload_part"
ON_ROW_ERROR = ("reject", "skip")


# --- quotas ---------------------------------------------------------------------------------------


def quota_for(tenant: Tenant) -> tuple[int, int]:
    """(max bytes stored, max live datasets) for the tenant."""
    q = DatasetQuota.objects.filter(tenant=tenant).first()
    max_bytes = q.max_bytes if q and q.max_bytes is not None else settings.COHORT_DATASET_QUOTA_BYTES
    max_count = q.max_datasets if q and q.max_datasets is not None else settings.COHORT_DATASET_QUOTA_COUNT
    return int(max_bytes), int(max_count)


def usage_for(tenant: Tenant) -> tuple[int, int]:
    """(bytes stored in live versions plus the declared size of open upload sessions, live
    datasets). Open sessions count in full from the start, so parallel sessions cannot jointly
    exceed the quota by filling up later."""
    stored = (
        DatasetVersion.objects.filter(tenant=tenant)
        .exclude(status=DatasetVersion.Status.PURGED)
        .aggregate(n=Sum("stored_bytes"))["n"]
        or 0
    )
    staged = (
        UploadSession.objects.filter(tenant=tenant, status=UploadSession.Status.OPEN).aggregate(n=Sum("size"))["n"] or 0
    )
    count = Dataset.objects.filter(tenant=tenant, status=Dataset.Status.ACTIVE).count()
    return int(stored) + int(staged), count


def _lock_tenant_quota(tenant: Tenant) -> None:
    """Serialise quota checks of one tenant (two uploads must not both pass a check that only
    one of them fits)."""
    with connection.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('cohort-quota'), %s::int)", [tenant.pk % 2**31])


def check_quota(tenant: Tenant, *, adding_bytes: int = 0, adding_dataset: bool = False) -> None:
    _lock_tenant_quota(tenant)
    max_bytes, max_count = quota_for(tenant)
    used_bytes, count = usage_for(tenant)
    if adding_dataset and count + 1 > max_count:
        _reject(
            tenant,
            "quota_exceeded",
            f"The tenant already has {count} datasets; its quota is {max_count}.",
            {"quota": "datasets", "limit": max_count, "used": count},
            action="dataset.quota_exceeded",
        )
    if adding_bytes and used_bytes + adding_bytes > max_bytes:
        _reject(
            tenant,
            "quota_exceeded",
            f"Storing {adding_bytes} more bytes would exceed the tenant's quota of {max_bytes} bytes.",
            {"quota": "bytes", "limit": max_bytes, "used": used_bytes, "requested": adding_bytes},
            action="dataset.quota_exceeded",
        )


def _reject(
    tenant: Tenant | int,
    code: str,
    message: str,
    details: dict[str, Any],
    *,
    action: str,
    target: object = None,
    target_type: str | None = None,
    target_id: object = None,
    http_status: int = 422,
) -> None:
    """Audit a refused input (in the caller's transaction, which commits) and raise the 4xx."""
    audit_record(
        action=action,
        tenant=tenant,
        target=target,
        target_type=target_type,
        target_id=target_id,
        outcome="error",
        details={"code": code, **_safe_details(details)},
    )
    raise RejectedInput(code, message, details=details, http_status=http_status)


def _safe_details(details: dict[str, Any]) -> dict[str, Any]:
    """Audit details are bounded: keep scalars and short lists only."""
    out: dict[str, Any] = {}
    for k, v in details.items():
        if isinstance(v, str | int | float | bool) or v is None:
            out[k] = v if not isinstance(v, str) else v[:200]
        elif isinstance(v, list):
            out[k] = v[:20]
        elif isinstance(v, dict):
            out[k] = {str(kk): vv for kk, vv in list(v.items())[:20] if isinstance(vv, str | int | float | bool)}
    return out


# --- datasets -------------------------------------------------------------------------------------


def dataset_create(*, tenant: Tenant, created_by: Any, name: str, description: str = "") -> Dataset:
    check_quota(tenant, adding_dataset=True)
    if Dataset.objects.filter(tenant=tenant, name=name, status=Dataset.Status.ACTIVE).exists():
        raise Conflict(f"A dataset named {name!r} already exists.")
    with audited_change():
        ds = Dataset.objects.create(
            tenant=tenant, name=name, description=description, created_by=_user_or_none(created_by)
        )
        PrivacyBudget.objects.create(
            tenant=tenant,
            dataset=ds,
            epsilon_total=Decimal(str(settings.COHORT_DEFAULT_EPSILON)),
            delta_total=Decimal("0.000001"),
        )
        audit_record(action="dataset.created", tenant=tenant, target=ds, details={"name": name})
    return ds


def dataset_update(*, tenant: Tenant, dataset: Dataset, **fields: Any) -> Dataset:
    changed = [k for k, v in fields.items() if getattr(dataset, k) != v]
    if not changed:
        return dataset
    if "name" in changed and (
        Dataset.objects.filter(tenant=tenant, name=fields["name"], status=Dataset.Status.ACTIVE)
        .exclude(pk=dataset.pk)
        .exists()
    ):
        raise Conflict(f"A dataset named {fields['name']!r} already exists.")
    with audited_change():
        for k in changed:
            setattr(dataset, k, fields[k])
        dataset.save(update_fields=[*changed, "updated_at"])
        audit_record(action="dataset.updated", tenant=tenant, target=dataset, details={"fields": sorted(changed)})
    return dataset


def dataset_delete(*, tenant: Tenant, dataset: Dataset) -> Dataset:
    """Soft delete: hidden at once, grants revoked, data purged after the retention period."""
    if dataset.status != Dataset.Status.ACTIVE:
        raise Conflict("This dataset is already deleted.")
    now = timezone.now()
    with audited_change():
        dataset.status = Dataset.Status.DELETED
        dataset.deleted_at = now
        dataset.purge_after = now + timedelta(days=settings.COHORT_DATASET_RETENTION_DAYS)
        dataset.save(update_fields=["status", "deleted_at", "purge_after", "updated_at"])
        grants = list(DatasetGrant.objects.filter(tenant=tenant, dataset=dataset, revoked_at__isnull=True))
        for grant in grants:
            grant.revoked_at = now
            grant.save(update_fields=["revoked_at"])
            audit_record(
                action="grant.lost",
                tenant=grant.grantee_id,
                target=grant,
                details={"dataset_id": dataset.pk, "permission": grant.permission, "reason": "dataset_deleted"},
            )
        audit_record(
            action="dataset.deleted",
            tenant=tenant,
            target=dataset,
            details={"purge_after": dataset.purge_after.isoformat(), "grants_revoked": len(grants)},
        )
    for grant in grants:
        _notify_revoked(grant)
    return dataset


def dataset_purge(*, tenant_id: int, dataset: Dataset) -> int:
    """Remove the stored data of a deleted dataset (after retention). Audited; returns objects removed."""
    removed = 0
    with audited_change():
        for v in DatasetVersion.objects.filter(tenant_id=tenant_id, dataset=dataset).exclude(
            status=DatasetVersion.Status.PURGED
        ):
            if v.storage_name:
                delete_object(v.storage_name)
                removed += 1
            if v.status in (DatasetVersion.Status.READY, DatasetVersion.Status.FAILED):
                v.status, v.storage_name, v.stored_bytes = DatasetVersion.Status.PURGED, "", 0
                v.save(update_fields=["status", "storage_name", "stored_bytes"])
        dataset.status = Dataset.Status.PURGED
        dataset.save(update_fields=["status", "updated_at"])
        audit_record(action="dataset.purged", tenant=tenant_id, target=dataset, details={"objects_removed": removed})
    return removed


def purge_expired() -> int:
    """Purge every deleted dataset past its retention period (the daily task)."""
    from apps.tenancy.scope import tenant_scope

    with platform_scope():
        due = list(
            Dataset.all_tenants.filter(status=Dataset.Status.DELETED, purge_after__lte=timezone.now()).values_list(
                "tenant_id", "pk"
            )
        )
    for tenant_id, pk in due:
        with transaction.atomic(), tenant_scope(tenant_id):
            ds = Dataset.objects.select_for_update().get(pk=pk)
            if ds.status == Dataset.Status.DELETED:
                dataset_purge(tenant_id=tenant_id, dataset=ds)
    return len(due)


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


def _user_or_none(user: Any) -> Any:
    return user if getattr(user, "key_id", None) is None and getattr(user, "pk", None) else None


def _next_number(dataset: Dataset) -> int:
    Dataset.objects.select_for_update().filter(pk=dataset.pk).first()
    last = DatasetVersion.objects.filter(dataset=dataset).order_by("-number").values_list("number", flat=True).first()
    return (last or 0) + 1


# --- upload options -------------------------------------------------------------------------------


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
        from rest_framework.exceptions import ValidationError

        raise ValidationError(errors)
    return opts


# --- uploads ----------------------------------------------------------------------------------------


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
        raise RejectedInput(
            "too_large",
            f"Chunks are limited to {settings.COHORT_UPLOAD_MAX_PART_BYTES} bytes.",
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
        raise RejectedInput(
            "length_mismatch",
            f"The chunk has {received} bytes; {length} were declared.",
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


def _drop_parts(session: UploadSession) -> None:
    for p in UploadPart.objects.filter(session=session):
        delete_object(p.storage_name)
    UploadPart.objects.filter(session=session).delete()


def upload_complete(
    *, tenant: Tenant, session: UploadSession, sha256: str, created_by: Any, inline: bool | None = None
) -> DatasetVersion:
    """Check the parts cover the file and hash to ``sha256``, then create the version and process
    it: in this request when small (errors come back as 4xx), else on a worker (status processing)."""
    _check_open(session)
    ranges = upload_received(session)
    if ranges != [(0, session.size)]:
        missing = _gaps(ranges, session.size)
        raise RejectedInput(
            "upload_incomplete",
            "Some byte ranges have not been received.",
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


def _start_version(
    *,
    tenant: Tenant,
    dataset: Dataset,
    make_session: Callable[[], UploadSession],
    expected_sha256: str | None,
    created_by: Any,
    inline: bool | None,
    staged_names: list[str],
    on_reject: Callable[[], None] | None = None,
) -> DatasetVersion:
    """Create the raw version for an upload and process it here (small) or on a worker (large).

    Inline, the whole change — session bookkeeping, version, processing — is one transaction with
    one event (``dataset.version_uploaded``, status ready). A rejected file rolls all of it back;
    the staged chunks are deleted and one ``dataset.upload_rejected`` event is kept."""
    try:
        with audited_change():
            session = make_session()
            if inline is None:
                inline = session.size <= settings.COHORT_DATASET_INLINE_MAX_BYTES
            version = DatasetVersion.objects.create(
                tenant=tenant,
                dataset=dataset,
                number=_next_number(dataset),
                kind=DatasetVersion.Kind.RAW,
                original_filename=session.filename,
                upload_bytes=session.size,
                options=session.options,
                created_by=_user_or_none(created_by),
            )
            session.status, session.version = UploadSession.Status.COMPLETED, version
            session.save(update_fields=["status", "version"])
            details: dict[str, Any] = {"dataset_id": dataset.pk, "bytes": session.size, "inline": inline}
            if inline:
                details.update(process_upload(version=version, session=session, expected_sha256=expected_sha256))
            details["status"] = version.status
            audit_record(action="dataset.version_uploaded", tenant=tenant, target=version, details=details)
    except _rejections() as exc:
        with audited_change():
            for name in staged_names:
                delete_object(name)
            if on_reject is not None:
                on_reject()
            audit_record(
                action="dataset.upload_rejected",
                tenant=tenant,
                target=dataset,
                outcome="error",
                details={"code": exc.code, **_safe_details(exc.details)},
            )
        raise RejectedInput(exc.code, exc.message, details=exc.details) from exc
    if not inline:
        from apps.datasets.tasks import process_version

        session_id = session.pk
        transaction.on_commit(
            lambda: process_version.delay(tenant.pk, version.pk, session_id, expected_sha256)  # type: ignore[attr-defined]
        )
    return version


def _fail_version(
    version: DatasetVersion, session: UploadSession, code: str, message: str, details: dict[str, Any]
) -> None:
    """A worker-processed upload failed: its chunks and any written object are deleted, the version
    keeps the machine-readable error, and the failure is one audit event."""
    with audited_change():
        _drop_parts(session)
        if version.storage_name:
            delete_object(version.storage_name)
        version.status, version.storage_name = DatasetVersion.Status.FAILED, ""
        version.error = {"code": code, "message": message[:1000], "details": details}
        version.save(update_fields=["status", "storage_name", "error"])
        audit_record(
            action="dataset.upload_rejected",
            tenant=version.tenant_id,
            target=version,
            outcome="error",
            details={"code": code, "dataset_id": version.dataset_id, **_safe_details(details)},
        )


def _assemble(session: UploadSession, path: str, expected_sha256: str | None) -> str:
    """Decrypt the parts in order into the workspace file; check the whole file's SHA-256."""
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        for part in UploadPart.objects.filter(session=session).order_by("offset").select_related("data_key"):
            reader = open_decrypted(part.tenant_id, PART_KIND, part.object_id, part.storage_name, part.data_key)
            with reader:
                while block := reader.read(1024 * 1024):
                    digest.update(block)
                    out.write(block)
    got = digest.hexdigest()
    if expected_sha256 is not None and got != expected_sha256:
        raise UploadRejected(
            "checksum_mismatch",
            "The SHA-256 of the received bytes does not match the one given at completion.",
            {"expected": expected_sha256, "received": got},
        )
    return got


def process_upload(*, version: DatasetVersion, session: UploadSession, expected_sha256: str | None) -> dict[str, Any]:
    """Validate, scan for PII, convert to typed Parquet and store it encrypted; mark the version
    ready. Raises IngestError / UploadRejected. The caller records the audit event."""
    from workers.pipeline import ingest_file

    opts = dict(session.options or {})
    with workspace() as tmp:
        path = os.path.join(tmp, "upload")
        sha = _assemble(session, path, expected_sha256)
        if os.path.getsize(path) == 0:
            raise UploadRejected("empty_file", "The file is empty.", {})
        up = EncryptedUpload(version.tenant_id, VERSION_KIND, version.pk, size_hint=os.path.getsize(path) * 2)
        try:
            result = ingest_file(path, filename=session.filename, options=opts, sink=cast(BinaryIO, up.writer))
            stored = up.finish()
        except BaseException:
            up.abort()
            raise
    _drop_parts(session)
    version.format = result.format
    version.upload_sha256 = sha
    version.content_sha256 = stored.sha256
    version.schema = result.schema.to_dict()
    version.validation = result.validation
    version.pii_report = result.pii_report
    version.rows = result.rows
    version.size_bytes = stored.plaintext_bytes
    version.stored_bytes = stored.stored_bytes
    version.storage_name = stored.name
    version.data_key = stored.key
    version.status = DatasetVersion.Status.READY
    version.ready_at = timezone.now()
    version.save()
    return {"rows": result.rows, "format": result.format, "columns": len(result.schema.columns)}


def process_version_async(tenant_id: int, version_id: int, session_id: int, expected_sha256: str | None) -> None:
    """Worker side of a large upload (called by the Celery task in tenant scope)."""
    version = DatasetVersion.objects.get(pk=version_id)
    session = UploadSession.objects.get(pk=session_id)
    if version.status != DatasetVersion.Status.PROCESSING:
        return  # a redelivered message: already done
    try:
        with audited_change():
            details = process_upload(version=version, session=session, expected_sha256=expected_sha256)
            audit_record(action="dataset.version_ready", tenant=tenant_id, target=version, details=details)
    except _rejections() as exc:
        _fail_version(version, session, exc.code, exc.message, exc.details)


# --- de-identification ---------------------------------------------------------------------------


def version_batches(version: DatasetVersion) -> Callable[[], Iterator[pa.RecordBatch]]:
    """A factory of fresh passes over a stored version's record batches (decrypting as it reads).
    ``pre_buffer=False``: Arrow's pre-buffering reads whole row groups as Python byte strings
    outside its memory pool, and the freed space stays fragmented in the C heap — RSS then grows
    with the file (measured: 234 → 379 MB over 3M rows, flat without it)."""

    assert version.data_key is not None, "only stored versions have batches"
    key = version.data_key

    def batches() -> Iterator[pa.RecordBatch]:
        reader = open_decrypted(version.tenant_id, VERSION_KIND, version.pk, version.storage_name, key)
        with reader:
            pf = pq.ParquetFile(pa.PythonFile(reader, mode="r"), pre_buffer=False)
            yield from pf.iter_batches(batch_size=65536)

    return batches


def _confirm_schema(schema: DatasetSchema, confirm: dict[str, Any] | None) -> DatasetSchema:
    """Apply the owner's confirmation of the inferred schema (label, task, roles) to the schema the
    de-identified version will carry. Raises a 400 naming each bad field."""
    if not confirm:
        return schema
    from rest_framework.exceptions import ValidationError

    errors: dict[str, list[str]] = {}
    roles = confirm.get("roles") or {}
    for name, role in roles.items():
        if not schema.has(name):
            errors.setdefault(f"schema.roles.{name}", []).append("No such column in the de-identified version.")
        else:
            schema.column(name).role = role
    if "label" in confirm:
        schema.label = confirm["label"]
        if schema.label and schema.has(schema.label):
            schema.column(schema.label).role = "label"
    if "task" in confirm:
        schema.task = confirm["task"]
    try:
        schema.check()
    except SchemaError as exc:
        for k, v in exc.fields.items():
            errors.setdefault(f"schema.{k}", []).extend(v)
    if errors:
        raise ValidationError(errors)
    return schema


def deidentify(
    *,
    tenant: Tenant,
    raw: DatasetVersion,
    policy: dict[str, Any],
    created_by: Any,
    confirm: dict[str, Any] | None = None,
) -> DatasetVersion:
    """Derive a de-identified version from a raw one by a column policy (and k-anonymity).
    ``confirm`` (label, task, roles) is the owner's confirmation of the inferred schema."""
    from workers.deid.policy import DeidPolicy, PolicyError

    if raw.kind != DatasetVersion.Kind.RAW or raw.status != DatasetVersion.Status.READY:
        raise Conflict("Only a ready raw version can be de-identified.")
    if raw.format == "zip":
        return _publish_images(tenant=tenant, raw=raw, policy=policy, created_by=created_by)
    schema = DatasetSchema.from_dict(raw.schema)
    try:
        parsed = DeidPolicy.from_dict(policy)
        parsed.check(schema)
    except PolicyError as exc:
        from rest_framework.exceptions import ValidationError

        raise ValidationError({f"policy.{k}": v for k, v in exc.fields.items()} or {"policy": [exc.message]})
    from workers.deid.policy import output_schema

    _confirm_schema(output_schema(schema, parsed), confirm)  # a bad confirmation is a 400 now, not later
    inline = raw.size_bytes <= settings.COHORT_DATASET_INLINE_MAX_BYTES
    actions = {c: p["action"] for c, p in list(parsed.to_dict().get("columns", {}).items())[:50]}
    with audited_change():
        version = DatasetVersion.objects.create(
            tenant=tenant,
            dataset=raw.dataset,
            number=_next_number(raw.dataset),
            kind=DatasetVersion.Kind.DEIDENTIFIED,
            source_version=raw,
            format="parquet",
            original_filename=raw.original_filename,
            policy=parsed.to_dict(),
            options={"confirm": confirm or {}},
            created_by=_user_or_none(created_by),
        )
        if inline:  # one event for the whole change
            result = _deidentify_body(version)
            audit_record(
                action="dataset.deidentified",
                tenant=tenant,
                target=version,
                details={"source_version_id": raw.pk, "actions": actions, "k": parsed.k, **result},
            )
        else:
            audit_record(
                action="dataset.deidentify_started",
                tenant=tenant,
                target=version,
                details={"source_version_id": raw.pk, "actions": actions, "k": parsed.k},
            )
    if not inline:
        from apps.datasets.tasks import deidentify_version

        transaction.on_commit(lambda: deidentify_version.delay(tenant.pk, version.pk))  # type: ignore[attr-defined]
    version.refresh_from_db()
    return version


def run_deidentify(version: DatasetVersion) -> None:
    """Worker side: transform a processing version (idempotent: anything else is left alone)."""
    if version.status != DatasetVersion.Status.PROCESSING:
        return
    with audited_change():
        result = _deidentify_body(version)
        audit_record(
            action="dataset.deidentified",
            tenant=version.tenant_id,
            target=version,
            details={"source_version_id": version.source_version_id, **result},
        )


def _deidentify_body(version: DatasetVersion) -> dict[str, Any]:
    """Transform the source version by the version's policy into a new encrypted object and mark
    the version ready. The caller wraps it in ``audited_change`` and records the event."""
    from workers.deid.policy import DeidPolicy
    from workers.deid.transform import deidentify as run_deid
    from workers.ingest import write_parquet
    from workers.pipeline import TypedStats

    assert version.source_version_id is not None, "a de-identified version has a source"
    raw = DatasetVersion.objects.select_related("data_key").get(pk=version.source_version_id)
    schema = DatasetSchema.from_dict(raw.schema)
    parsed = DeidPolicy.from_dict(version.policy)
    pseudonym_key = vault.material(vault.active_key(version.tenant_id, DataKey.Purpose.PSEUDONYM))
    out_schema, batches, stats = run_deid(version_batches(raw), schema, parsed, pseudonym_key)
    out_schema = _confirm_schema(out_schema, (version.options or {}).get("confirm"))
    aggregates = TypedStats(out_schema)  # taken as the batches are written: no second decrypting pass
    up = EncryptedUpload(version.tenant_id, VERSION_KIND, version.pk, size_hint=raw.size_bytes)
    try:
        rows = write_parquet(aggregates.tap(batches), out_schema.arrow_schema(), cast(BinaryIO, up.writer))
        stored = up.finish()
    except BaseException:
        up.abort()
        raise
    version.schema = out_schema.to_dict()
    version.deid_report = stats.to_dict()
    version.validation = aggregates.result()
    version.rows = rows
    version.size_bytes = stored.plaintext_bytes
    version.stored_bytes = stored.stored_bytes
    version.storage_name = stored.name
    version.data_key = stored.key
    version.content_sha256 = stored.sha256
    version.status = DatasetVersion.Status.READY
    version.ready_at = timezone.now()
    version.save()
    k_report = (version.deid_report.get("k_anonymity") or {}) if parsed.k else {}
    return {"rows": rows, "k_achieved": k_report.get("k_achieved"), "rows_suppressed": k_report.get("rows_suppressed")}


def run_deidentify_async(version_id: int) -> None:
    """Worker side of a large de-identification (called by the Celery task in tenant scope)."""
    version = DatasetVersion.objects.get(pk=version_id)
    try:
        with transaction.atomic():
            run_deidentify(version)
    except Exception as exc:
        logger.exception("de-identification of version %s failed", version_id)
        with audited_change():
            version.status = DatasetVersion.Status.FAILED
            version.error = {"code": "deidentify_failed", "message": type(exc).__name__}
            version.save(update_fields=["status", "error"])
            audit_record(
                action="dataset.deidentify_failed",
                tenant=version.tenant_id,
                target=version,
                outcome="error",
                details={"error": type(exc).__name__},
            )


def _publish_images(*, tenant: Tenant, raw: DatasetVersion, policy: dict[str, Any], created_by: Any) -> DatasetVersion:
    """An image dataset's "de-identified" version: the validated zip re-encrypted as a new object.
    There are no columns to transform (images are not altered: no face or text blurring), so the
    only policy accepted is the empty one; the step exists so training and grantees keep seeing
    de-identified versions only, and the owner decides explicitly to publish."""
    if policy.get("columns") or policy.get("quasi_identifiers") or policy.get("k"):
        from rest_framework.exceptions import ValidationError

        raise ValidationError({"policy": ["Image datasets take an empty policy (images are published as is)."]})
    assert raw.data_key is not None
    with audited_change():
        version = DatasetVersion.objects.create(
            tenant=tenant,
            dataset=raw.dataset,
            number=_next_number(raw.dataset),
            kind=DatasetVersion.Kind.DEIDENTIFIED,
            source_version=raw,
            format="zip",
            original_filename=raw.original_filename,
            policy={"columns": {}, "quasi_identifiers": [], "k": None},
            created_by=_user_or_none(created_by),
        )
        up = EncryptedUpload(tenant.pk, VERSION_KIND, version.pk, size_hint=raw.size_bytes)
        try:
            with open_decrypted(tenant.pk, VERSION_KIND, raw.pk, raw.storage_name, raw.data_key) as reader:
                while block := reader.read(1024 * 1024):
                    up.write(block)
            stored = up.finish()
        except BaseException:
            up.abort()
            raise
        version.schema, version.validation, version.rows = raw.schema, raw.validation, raw.rows
        version.size_bytes, version.stored_bytes, version.storage_name = (
            stored.plaintext_bytes,
            stored.stored_bytes,
            stored.name,
        )
        version.data_key, version.content_sha256 = stored.key, stored.sha256
        version.status, version.ready_at = DatasetVersion.Status.READY, timezone.now()
        version.save()
        audit_record(
            action="dataset.deidentified",
            tenant=tenant,
            target=version,
            details={"source_version_id": raw.pk, "rows": raw.rows, "images": True},
        )
    return version


# --- grants ---------------------------------------------------------------------------------------


def grant_create(
    *,
    tenant: Tenant,
    dataset: Dataset,
    grantee: Tenant,
    permission: str,
    created_by: Any,
    expires_at: datetime | None = None,
    note: str = "",
    epsilon_allotment: Decimal | None = None,
    delta_allotment: Decimal | None = None,
) -> DatasetGrant:
    """A grant; a ``process`` grant may carry the grantee's (ε, δ) allotment of the dataset's
    privacy budget (none: the grantee's DP uses are refused)."""
    if dataset.status != Dataset.Status.ACTIVE:
        raise Conflict("This dataset is deleted.")
    if permission != DatasetGrant.Permission.PROCESS and (epsilon_allotment is not None or delta_allotment is not None):
        from rest_framework.exceptions import ValidationError

        raise ValidationError({"epsilon_allotment": ["Only process grants carry a privacy-budget allotment."]})
    if grantee.pk == tenant.pk:
        from rest_framework.exceptions import ValidationError

        raise ValidationError({"grantee": ["A tenant does not need a grant for its own dataset."]})
    if expires_at is not None and expires_at <= timezone.now():
        from rest_framework.exceptions import ValidationError

        raise ValidationError({"expires_at": ["Must be in the future."]})
    now = timezone.now()
    existing = DatasetGrant.objects.filter(
        tenant=tenant, dataset=dataset, grantee=grantee, permission=permission, revoked_at__isnull=True
    ).first()
    if existing is not None and existing.is_live(now):
        raise Conflict("This tenant already holds this grant; revoke it first to change it.")
    with audited_change():
        if existing is not None:  # expired: close it so the new grant can take its place
            existing.revoked_at = existing.expires_at
            existing.save(update_fields=["revoked_at"])
        grant = DatasetGrant.objects.create(
            tenant=tenant,
            dataset=dataset,
            grantee=grantee,
            permission=permission,
            expires_at=expires_at,
            note=note,
            epsilon_allotment=epsilon_allotment,
            delta_allotment=delta_allotment,
            created_by=_user_or_none(created_by),
        )
        details = {
            "dataset_id": dataset.pk,
            "grantee": grantee.slug,
            "permission": permission,
            "expires_at": expires_at.isoformat() if expires_at else None,
            "epsilon_allotment": None if epsilon_allotment is None else str(epsilon_allotment),
            "delta_allotment": None if delta_allotment is None else str(delta_allotment),
        }
        audit_record(action="grant.created", tenant=tenant, target=grant, details=details)
        audit_record(action="grant.received", tenant=grantee, target=grant, details={**details, "owner": tenant.slug})
    return grant


def grant_revoke(*, tenant: Tenant, grant: DatasetGrant) -> DatasetGrant:
    """Revoke at once: queries, queued and running work check the grant (``dataset_access``)."""
    if grant.revoked_at is not None:
        raise Conflict("This grant is already revoked.")
    with audited_change():
        grant.revoked_at = timezone.now()
        grant.save(update_fields=["revoked_at"])
        details = {"dataset_id": grant.dataset_id, "grantee_id": grant.grantee_id, "permission": grant.permission}
        audit_record(action="grant.revoked", tenant=tenant, target=grant, details=details)
        audit_record(action="grant.lost", tenant=grant.grantee_id, target=grant, details=details)
    _notify_revoked(grant)
    return grant


def _notify_revoked(grant: DatasetGrant) -> None:
    """After commit, the grantee's live streams about the dataset check the gate and close
    (``apps.datasets.live``); running training sees the revocation at its next gate check."""
    from apps.datasets.live import publish_access_changed

    transaction.on_commit(
        lambda: publish_access_changed(grant.grantee_id, grant.dataset_id, grant_id=grant.pk, event="revoked")
    )


# --- privacy budget ---------------------------------------------------------------------------------


def budget_set(*, tenant: Tenant, budget: PrivacyBudget, epsilon: Decimal, delta: Decimal) -> PrivacyBudget:
    usage = budget_usage(budget)
    committed_eps = usage["epsilon_spent"] + usage["epsilon_reserved"]
    committed_delta = usage["delta_spent"] + usage["delta_reserved"]
    if epsilon < committed_eps or delta < committed_delta:
        raise Conflict(
            f"The budget cannot go below what is already spent or reserved (ε {committed_eps}, δ {committed_delta})."
        )
    with audited_change():
        old = {"epsilon": str(budget.epsilon_total), "delta": str(budget.delta_total)}
        budget.epsilon_total, budget.delta_total = epsilon, delta
        budget.save(update_fields=["epsilon_total", "delta_total", "updated_at"])
        audit_record(
            action="budget.set",
            tenant=tenant,
            target=budget,
            details={"dataset_id": budget.dataset_id, "old": old, "epsilon": str(epsilon), "delta": str(delta)},
        )
    return budget


def _lock_budget(budget: PrivacyBudget) -> None:
    with connection.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('cohort-budget'), %s::int)", [budget.pk % 2**31])


def budget_usage(budget: PrivacyBudget) -> dict[str, Decimal]:
    """Spent and reserved (ε, δ) over ALL consumers. A grantee's own scope hides other consumers'
    reservations, so the sums come from ``cohort_budget_usage`` (SECURITY DEFINER: the four sums
    only, for a caller who may see the budget), not from a platform scope in the request path."""
    with connections[db_alias()].cursor() as cur:
        cur.execute("SELECT * FROM cohort_budget_usage(%s)", [budget.pk])
        eps_spent, delta_spent, eps_held, delta_held = cur.fetchone()
    return {
        "epsilon_spent": Decimal(eps_spent),
        "delta_spent": Decimal(delta_spent),
        "epsilon_reserved": Decimal(eps_held),
        "delta_reserved": Decimal(delta_held),
    }


def budget_reserve(
    *,
    consumer: Tenant,
    budget: PrivacyBudget,
    epsilon: Decimal,
    delta: Decimal,
    purpose: str,
    reference: str,
    created_by: Any,
) -> BudgetReservation:
    """Reserve (ε, δ) before a differentially private use starts. Refused when the reservation
    would take spent + reserved past the budget (basic sequential composition), or, for a
    grantee, past the allotment its ``process`` grant carries (``allotment_exceeded``, naming the
    grant). Called by the platform when a job or federation starts; the API lets only the
    dataset's owner reserve directly."""
    _lock_budget(budget)
    if consumer.pk != budget.tenant_id:
        _check_allotment(consumer=consumer, budget=budget, epsilon=epsilon, delta=delta)
    usage = budget_usage(budget)
    eps_after = usage["epsilon_spent"] + usage["epsilon_reserved"] + epsilon
    delta_after = usage["delta_spent"] + usage["delta_reserved"] + delta
    if eps_after > budget.epsilon_total or delta_after > budget.delta_total:
        _reject(
            consumer,
            "budget_exceeded",
            "This use would exceed the dataset's privacy budget.",
            {
                "dataset_id": budget.dataset_id,
                "epsilon_requested": str(epsilon),
                "delta_requested": str(delta),
                "epsilon_available": str(budget.epsilon_total - usage["epsilon_spent"] - usage["epsilon_reserved"]),
                "delta_available": str(budget.delta_total - usage["delta_spent"] - usage["delta_reserved"]),
            },
            action="budget.refused",
            target=budget,
        )
    with audited_change():
        res = BudgetReservation.all_tenants.create(
            tenant_id=budget.tenant_id,
            budget=budget,
            consumer=consumer,
            epsilon=epsilon,
            delta=delta,
            purpose=purpose,
            reference=reference,
            created_by=_user_or_none(created_by),
        )
        details = {
            "dataset_id": budget.dataset_id,
            "consumer": consumer.slug,
            "epsilon": str(epsilon),
            "delta": str(delta),
            "purpose": purpose[:200],
        }
        audit_record(action="budget.reserved", tenant=budget.tenant_id, target=res, details=details)
        if consumer.pk != budget.tenant_id:
            audit_record(action="budget.reserved", tenant=consumer, target=res, details=details)
    return res


def _check_allotment(*, consumer: Tenant, budget: PrivacyBudget, epsilon: Decimal, delta: Decimal) -> None:
    """A grantee's reservations on a dataset (held plus spent) stay within its grant's allotment."""
    grant = live_grants(grantee=consumer, dataset_id=budget.dataset_id).filter(permission="process").first()
    if grant is None:
        raise RejectedInput("not_granted", "This tenant holds no live process grant on this dataset.", http_status=403)
    zero = Decimal(0)
    # The consumer's own rows: visible in its own scope (RLS: consumer_id = the tenant in scope).
    mine = BudgetReservation.all_tenants.filter(budget_id=budget.pk, consumer=consumer)
    spent = mine.filter(state=BudgetReservation.State.COMMITTED).aggregate(e=Sum("epsilon_spent"), d=Sum("delta_spent"))
    held = mine.filter(state=BudgetReservation.State.RESERVED).aggregate(e=Sum("epsilon"), d=Sum("delta"))
    eps_used = (spent["e"] or zero) + (held["e"] or zero)
    delta_used = (spent["d"] or zero) + (held["d"] or zero)
    eps_allot = grant.epsilon_allotment if grant.epsilon_allotment is not None else zero
    delta_allot = grant.delta_allotment if grant.delta_allotment is not None else zero
    if eps_used + epsilon > eps_allot or delta_used + delta > delta_allot:
        _reject(
            consumer,
            "allotment_exceeded",
            f"This use would exceed the privacy-budget allotment of grant {grant.pk}.",
            {
                "dataset_id": budget.dataset_id,
                "grant_id": grant.pk,
                "epsilon_allotment": None if grant.epsilon_allotment is None else str(grant.epsilon_allotment),
                "delta_allotment": None if grant.delta_allotment is None else str(grant.delta_allotment),
                "epsilon_used": str(eps_used),
                "delta_used": str(delta_used),
                "epsilon_requested": str(epsilon),
                "delta_requested": str(delta),
            },
            action="budget.refused",
            target=budget,
        )


def budget_settle(
    *,
    consumer: Tenant,
    reservation: BudgetReservation,
    commit: bool,
    epsilon_spent: Decimal | None = None,
    delta_spent: Decimal | None = None,
) -> BudgetReservation:
    """Commit the actual spend (at most the reservation; defaults to all of it) or release it."""
    budget = PrivacyBudget.all_tenants.get(pk=reservation.budget_id)
    _lock_budget(budget)
    reservation.refresh_from_db()
    if reservation.state != BudgetReservation.State.RESERVED:
        raise Conflict(f"This reservation is already {reservation.state}.")
    if commit:
        e = reservation.epsilon if epsilon_spent is None else epsilon_spent
        d = reservation.delta if delta_spent is None else delta_spent
        if e > reservation.epsilon or d > reservation.delta:
            from rest_framework.exceptions import ValidationError

            raise ValidationError({"epsilon_spent": ["A use cannot spend more than it reserved."]})
        reservation.epsilon_spent, reservation.delta_spent = e, d
    reservation.state = BudgetReservation.State.COMMITTED if commit else BudgetReservation.State.RELEASED
    reservation.settled_at = timezone.now()
    with audited_change():
        reservation.save(update_fields=["state", "epsilon_spent", "delta_spent", "settled_at"])
        details = {
            "dataset_id": budget.dataset_id,
            "consumer_id": reservation.consumer_id,
            "epsilon_spent": str(reservation.epsilon_spent),
            "delta_spent": str(reservation.delta_spent),
        }
        action = "budget.committed" if commit else "budget.released"
        audit_record(action=action, tenant=budget.tenant_id, target=reservation, details=details)
        if consumer.pk != budget.tenant_id:
            audit_record(action=action, tenant=consumer, target=reservation, details=details)
    return reservation
