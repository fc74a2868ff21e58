"""One error shape for the whole API: ``{"error": {"code", "message", "fields"}}``.

Access denials (unauthenticated, forbidden, not found inside a tenant, throttled) are audited here
and keep the request transaction; any other error rolls the request transaction back.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from rest_framework import exceptions, serializers, status
from rest_framework.response import Response
from rest_framework.views import set_rollback

from apps.common import exceptions as domain
from apps.common.context import get_context

logger = logging.getLogger("apps.api")


class AccessDenied(exceptions.NotFound):
    """Raised by access helpers: answers exactly like a missing object (404, same body)."""

    default_detail = "Not found."
    default_code = "not_found"

    def __init__(
        self,
        *,
        reason: str,
        tenant_id: int | None = None,
        action: str | None = None,
        target_type: str | None = None,
        target_id: object = None,
    ) -> None:
        super().__init__()
        self.audit = {
            "reason": reason,
            "tenant_id": tenant_id,
            "action": action,
            "target_type": target_type,
            "target_id": target_id,
        }


class Forbidden(exceptions.PermissionDenied):
    """A member whose role lacks the permission (they may know the object exists)."""

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        tenant_id: int | None = None,
        action: str | None = None,
        code: str = "permission_denied",
    ) -> None:
        super().__init__(message, code=code)
        self.audit = {"reason": reason, "tenant_id": tenant_id, "action": action}


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "Request body too large."
    default_code = "payload_too_large"


class RangeNotSatisfiable(exceptions.APIException):
    """A byte range outside the resource (an upload chunk past the declared size): nothing is stored."""

    status_code = status.HTTP_416_REQUESTED_RANGE_NOT_SATISFIABLE
    default_detail = "The byte range lies outside the declared size."
    default_code = "range_not_satisfiable"

    def __init__(self, message: str, *, size: int | None = None) -> None:
        super().__init__(message)
        self.size = size


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "Conflict."
    default_code = "conflict"


class RejectedInput(exceptions.APIException):
    """Input that cannot be accepted (a bad file, a budget overrun, a quota). The service has
    already undone its partial work and recorded the failure as an audit event, so the request's
    transaction commits (keeping that event) instead of rolling back. ``details`` is a JSON-safe,
    machine-readable reason; it never carries the caller's data."""

    status_code: int = status.HTTP_422_UNPROCESSABLE_ENTITY
    default_code = "rejected"
    commit = True

    def __init__(
        self, code: str, message: str, *, details: dict[str, Any] | None = None, http_status: int = 422
    ) -> None:
        super().__init__(message, code=code)
        self.status_code = http_status
        self.details = details or {}


class ErrorBodySerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()
    fields = serializers.DictField(  # type: ignore[assignment]
        child=serializers.ListField(child=serializers.CharField()), required=False
    )
    details = serializers.DictField(required=False, help_text="Machine-readable reason (rejected input)")


class ErrorSerializer(serializers.Serializer):
    """The error envelope every failing response uses."""

    error = ErrorBodySerializer()


def _flatten(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = f"{prefix}{key}" if key != "non_field_errors" else (prefix.rstrip(".") or "non_field_errors")
            for k, v in _flatten(value, f"{name}.").items():
                out.setdefault(k, []).extend(v)
    elif isinstance(detail, list):
        if all(not isinstance(i, dict | list) for i in detail):
            out[prefix.rstrip(".") or "non_field_errors"] = [str(i) for i in detail]
        else:
            for idx, item in enumerate(detail):
                for k, v in _flatten(item, f"{prefix}{idx}.").items():
                    out.setdefault(k, []).extend(v)
    else:
        out[prefix.rstrip(".") or "non_field_errors"] = [str(detail)]
    return out


def error_response(
    code: str,
    message: str,
    http_status: int,
    fields: dict[str, list[str]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body: dict[str, Any] = {"code": code, "message": message}
    if fields:
        body["fields"] = fields
    return Response({"error": body}, status=http_status, headers=headers)


def _audit_denial(exc: Exception, context: dict[str, Any], code: str) -> None:
    from apps.audit.services import audit_record

    info = dict(getattr(exc, "audit", {}) or {})
    if info.get("skip"):
        return
    request = context.get("request")
    tenant_id = info.get("tenant_id") or getattr(request, "cohort_url_tenant_id", None)
    view = context.get("view")
    audit_record(
        action="access.denied",
        tenant=tenant_id,
        target_type=info.get("target_type"),
        target_id=info.get("target_id"),
        outcome="denied",
        details={
            "reason": info.get("reason") or code,
            "permission": info.get("action") or getattr(view, "permission_action", None),
            "method": getattr(request, "method", None),
            "route": getattr(getattr(request, "resolver_match", None), "route", None),
        },
    )


_DENIALS = (
    exceptions.NotAuthenticated,
    exceptions.AuthenticationFailed,
    exceptions.PermissionDenied,
    exceptions.Throttled,
    AccessDenied,
)


def from_domain(exc: domain.DomainError) -> exceptions.APIException:
    """The API exception a domain error answers as (same status, code, message and audit rules
    as the API exceptions raised before services had their own errors)."""
    if isinstance(exc, domain.NotFound):
        out: exceptions.APIException = AccessDenied(**exc.audit)
    elif isinstance(exc, domain.PermissionDenied):
        out = Forbidden(exc.message, code=exc.code, **exc.audit)
    elif isinstance(exc, domain.Conflict):
        out = Conflict(exc.message, code=exc.code)
    elif isinstance(exc, domain.Invalid):
        out = exceptions.ValidationError(exc.fields)
    elif isinstance(exc, domain.Unprocessable):
        out = RejectedInput(exc.code, exc.message, details=exc.details, http_status=exc.http_status)
    elif isinstance(exc, domain.RangeNotSatisfiable):
        out = RangeNotSatisfiable(exc.message, size=exc.size)
    else:
        out = exceptions.APIException(exc.message, code=exc.code)
        out.status_code = exc.http_status
    out.__cause__ = exc
    return out


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF exception handler producing the Cohort error envelope."""
    if isinstance(exc, domain.DomainError):
        exc = from_domain(exc)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, RequestDataTooBig):
        exc = PayloadTooLarge()
    elif isinstance(exc, TooManyFieldsSent):
        exc = exceptions.ValidationError({"non_field_errors": ["Too many fields."]})
    elif isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(
            exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        )

    if not isinstance(exc, exceptions.APIException):
        logger.exception("unhandled error in API view", exc_info=exc)
        set_rollback()
        rid = get_context().request_id
        return error_response("server_error", f"Internal error. Reference: {rid}.", 500)

    headers: dict[str, str] = {}
    if getattr(exc, "auth_header", None):
        headers["WWW-Authenticate"] = exc.auth_header  # type: ignore[attr-defined]
    if isinstance(exc, RangeNotSatisfiable) and exc.size is not None:
        headers["Content-Range"] = f"bytes */{exc.size}"
    if getattr(exc, "wait", None):
        headers["Retry-After"] = str(int(exc.wait))  # type: ignore[attr-defined]

    is_denial = isinstance(exc, _DENIALS) or (
        isinstance(exc, exceptions.NotFound) and getattr(context.get("request"), "cohort_url_tenant_id", None)
    )
    if is_denial:
        code = exc.get_codes() if isinstance(exc.get_codes(), str) else "denied"
        _audit_denial(exc, context, str(code))
    elif not getattr(exc, "commit", False):
        set_rollback()

    if isinstance(exc, RejectedInput):
        resp = error_response(str(exc.get_codes()), str(exc.detail), exc.status_code, headers=headers)
        if exc.details:
            resp.data["error"]["details"] = exc.details
        return resp
    if isinstance(exc, exceptions.ValidationError):
        fields = _flatten(exc.detail)
        return error_response(
            "validation_error", "The request is invalid; see fields.", exc.status_code, fields, headers
        )
    if isinstance(exc, exceptions.ParseError):
        return error_response("malformed_request", str(exc.detail), exc.status_code, headers=headers)
    if isinstance(exc, exceptions.NotFound):
        return error_response("not_found", "Not found.", 404, headers=headers)
    detail = exc.detail
    message = str(detail if not isinstance(detail, dict | list) else exc.default_detail)
    code = exc.get_codes()
    code = code if isinstance(code, str) else exc.default_code
    if isinstance(exc, exceptions.Throttled) and code == "throttled":
        code = "rate_limited"
    return error_response(str(code), message, exc.status_code, headers=headers)


# --- Django-level error views (no route matched, or an error outside DRF) -------------------------


def _api_error(request: Any, code: str, message: str, http_status: int) -> Any:
    """The API error envelope for /api/ paths; None elsewhere (Django's HTML pages)."""
    from django.http import JsonResponse

    if not request.path.startswith("/api/"):
        return None
    body = {"error": {"code": code, "message": message}}
    return JsonResponse(body, status=http_status, json_dumps_params={"separators": (",", ":")})


def not_found_view(request: Any, exception: Exception | None = None) -> Any:
    """``handler404``: under /api/ the same body as every other 404 (no route-existence oracle)."""
    from django.views import defaults

    return _api_error(request, "not_found", "Not found.", 404) or defaults.page_not_found(request, exception)


def bad_request_view(request: Any, exception: Exception | None = None) -> Any:
    from django.views import defaults

    return _api_error(request, "bad_request", "Bad request.", 400) or defaults.bad_request(
        request, exception or Exception("bad request")
    )


def server_error_view(request: Any) -> Any:
    from django.views import defaults

    rid = getattr(request, "request_id", None) or get_context().request_id
    message = f"Internal error. Reference: {rid}."
    return _api_error(request, "server_error", message, 500) or defaults.server_error(request)
