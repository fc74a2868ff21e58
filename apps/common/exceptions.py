"""Domain errors: what services raise, free of HTTP and DRF.

Services and selectors raise these; the API edge (:func:`apps.common.errors.exception_handler`)
maps each to the project's one error shape, ``{"error": {"code", "message", "fields"?,
"details"?}}``, with the status in ``http_status``. Workers use :class:`Retryable` and
:class:`RunFailed` to decide whether a failed run is tried again.

* :class:`NotFound` (404) — missing, or not the caller's: both answer alike. ``audit`` (reason,
  tenant_id, action, target_type, target_id) makes it an audited access denial.
* :class:`PermissionDenied` (403) — the caller may know the object exists but may not do this;
  an audited access denial too (``audit``: reason, tenant_id, action).
* :class:`Conflict` (409) — the object's state does not allow it (already finished, a race lost).
* :class:`Invalid` (400) — bad input; ``fields`` maps a dotted field path to its messages.
* :class:`Unprocessable` (422) and its kinds :class:`QuotaExceeded`, :class:`BudgetExceeded`,
  :class:`PayloadTooLarge` (413) — well-formed input that cannot be accepted; ``details`` is a
  JSON-safe, machine-readable reason (never the caller's data). The request's transaction commits
  (the service has undone its partial work and may have recorded the refusal as an audit event).
  ``http_status`` answers a refusal with the status its API has always used (a 400
  ``length_mismatch``, a 409 ``upload_incomplete`` with the missing ranges).
* :class:`RangeNotSatisfiable` (416) — a byte range outside the resource (``size``: its length,
  answered as ``Content-Range: bytes */size``); nothing is stored.
* :class:`Retryable` — a transient failure (broker, network, a lost worker): try again.
* :class:`RunFailed` — a run that cannot succeed on retry (bad spec, bad data, out of memory).
"""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """Base of every domain error: a stable ``code``, a human ``message``, optionally the
    ``field`` it is about (a dotted path) and JSON-safe ``details``."""

    code: str = "error"
    http_status: int = 400
    default_message: str = "The request cannot be completed."
    commit: bool = False  # keep the request's transaction (its audit events) when raised

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        field: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        self.message = message or self.default_message
        super().__init__(self.message)
        if code is not None:
            self.code = code
        self.field = field
        self.details = dict(details or {})

    def __str__(self) -> str:
        return self.message


class NotFound(DomainError):
    code = "not_found"
    http_status = 404
    default_message = "Not found."

    def __init__(
        self,
        message: str | None = None,
        *,
        reason: str = "not_found",
        tenant_id: int | None = None,
        action: str | None = None,
        target_type: str | None = None,
        target_id: object = None,
    ) -> None:
        super().__init__(message)
        self.audit: dict[str, Any] = {
            "reason": reason,
            "tenant_id": tenant_id,
            "action": action,
            "target_type": target_type,
            "target_id": target_id,
        }


class PermissionDenied(DomainError):
    """Not allowed. ``reason`` (default: the code), ``tenant_id`` and ``action`` (the permission
    checked; default: the view's) go into the audited access denial."""

    code = "permission_denied"
    http_status = 403
    default_message = "You do not have permission to perform this action."

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        reason: str | None = None,
        tenant_id: int | None = None,
        action: str | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.audit: dict[str, Any] = {"reason": reason or self.code, "tenant_id": tenant_id, "action": action}


class Conflict(DomainError):
    code = "conflict"
    http_status = 409
    default_message = "Conflict."


class Invalid(DomainError):
    """Bad input. ``fields`` maps dotted field paths to messages; ``field`` + ``message`` is the
    one-field shorthand."""

    code = "validation_error"
    http_status = 400
    default_message = "The request is invalid; see fields."

    def __init__(
        self,
        message: str | None = None,
        *,
        field: str | None = None,
        fields: dict[str, list[str]] | None = None,
    ) -> None:
        super().__init__(message, field=field)
        merged = {k: [str(m) for m in v] for k, v in (fields or {}).items()}
        if field is not None and field not in merged:
            merged[field] = [self.message]
        self.fields = merged or {"non_field_errors": [self.message]}


class Unprocessable(DomainError):
    code = "rejected"
    http_status = 422
    commit = True

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        field: str | None = None,
        details: dict[str, Any] | None = None,
        http_status: int | None = None,
    ) -> None:
        super().__init__(message, code=code, field=field, details=details)
        if http_status is not None:
            self.http_status = http_status


class QuotaExceeded(Unprocessable):
    code = "quota_exceeded"
    default_message = "A quota would be exceeded."


class BudgetExceeded(Unprocessable):
    code = "budget_exceeded"
    default_message = "The privacy budget would be exceeded."


class PayloadTooLarge(Unprocessable):
    code = "too_large"
    http_status = 413
    default_message = "Too large."


class RangeNotSatisfiable(DomainError):
    """A byte range outside the resource (an upload chunk past the declared size)."""

    code = "range_not_satisfiable"
    http_status = 416
    default_message = "The byte range lies outside the declared size."

    def __init__(self, message: str | None = None, *, size: int | None = None) -> None:
        super().__init__(message)
        self.size = size


class Retryable(DomainError):
    """Transient: the same work may succeed when tried again."""

    code = "retryable"
    http_status = 503
    default_message = "Temporarily unavailable; try again."


class RunFailed(DomainError):
    """A run that cannot succeed on retry."""

    code = "run_failed"
    http_status = 422
    default_message = "The run failed."
