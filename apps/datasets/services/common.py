"""Shared pieces of the dataset services: the refusal helper (audited, then a domain error),
rejection types, version kinds and small helpers every concern uses."""

from __future__ import annotations

from typing import Any

from apps.audit.services import audit_record
from apps.common.exceptions import Unprocessable
from apps.datasets.models import UploadPart, UploadSession
from apps.datasets.storage import delete_object
from apps.tenancy.models import Tenant
from workers.ingest.errors import IngestError


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
    raise Unprocessable(code=code, message=message, details=details, http_status=http_status)


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


def _user_or_none(user: Any) -> Any:
    return user if getattr(user, "key_id", None) is None and getattr(user, "pk", None) else None


def _drop_parts(session: UploadSession) -> None:
    for p in UploadPart.objects.filter(session=session):
        delete_object(p.storage_name)
    UploadPart.objects.filter(session=session).delete()
