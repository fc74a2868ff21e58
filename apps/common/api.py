"""API helpers: strict input serializers, documented error responses, paginated lists."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiResponse, extend_schema_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.common.errors import ErrorSerializer
from apps.common.pagination import CursorPagination


class StrictSerializer(serializers.Serializer):
    """Rejects unknown fields (typos and mass assignment: ``tenant_id``, ``is_staff``…) with 400."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Nested ``Input`` classes share a name; give each a unique OpenAPI component name.
        if "." in cls.__qualname__:
            extend_schema_serializer(component_name=cls.__qualname__.replace(".", ""))(cls)

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return super().to_internal_value(data)


_ERROR_TEXT = {
    400: "Invalid request (malformed JSON, unknown or invalid fields)",
    401: "Not authenticated, or invalid/expired/revoked API key",
    403: "Authenticated but not allowed (role, API-key scope, suspended tenant, CSRF)",
    404: "Not found (also for other tenants' objects and tenants you are not a member of)",
    409: "Conflict with the current state",
    413: "Request body too large",
    415: "Unsupported media type (send application/json)",
    416: "Byte range outside the declared size (nothing is stored)",
    422: "Rejected input (bad file, quota, budget; `error.details` says why) or an Idempotency-Key reused "
    "with a different request",
    429: "Rate limited; see Retry-After",
}


def error_responses(*codes: int) -> dict[int, OpenApiResponse]:
    """OpenAPI entries for the error statuses an operation can return (all share ErrorSerializer)."""
    base = {400, 401, 403, 404, 429}
    return {c: OpenApiResponse(ErrorSerializer, description=_ERROR_TEXT[c]) for c in sorted(base | set(codes))}


def paginated(
    view: APIView, request: Request, queryset: QuerySet[Any], serializer_class: type, ordering: str = "-id"
) -> Response:
    paginator = CursorPagination()
    paginator.ordering = ordering
    page = paginator.paginate_queryset(queryset, request, view=view)
    data = serializer_class(page, many=True).data
    return paginator.get_paginated_response(data)
