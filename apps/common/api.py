"""API helpers: strict input serializers, documented error responses, paginated lists."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.http import QueryDict
from drf_spectacular.utils import OpenApiResponse, extend_schema_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.common.errors import ErrorSerializer
from apps.common.pagination import CursorPagination


def _json_type_error(field: serializers.Field, value: Any) -> str | None:
    """What is wrong with a JSON value for ``field`` that DRF's coercion would let through, if anything.

    DRF turns ``5`` into ``"5"`` for a CharField, ``"5"`` into ``5`` for an IntegerField and ``"yes"``
    into ``True``, and trims a string before measuring it; the OpenAPI document promises a string, an
    integer, a boolean and ``maxLength`` as sent. A JSON body is held to the document.
    """
    if value is None:
        return None  # allow_null is the field's own check
    if isinstance(field, serializers.BooleanField):
        return None if isinstance(value, bool) else "Must be a boolean."
    if isinstance(field, serializers.IntegerField):
        return None if isinstance(value, int) and not isinstance(value, bool) else "Must be an integer."
    if isinstance(field, serializers.FloatField):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return None if ok else "Must be a number."
    if isinstance(field, serializers.CharField):
        if not isinstance(value, str):
            return "Not a valid string."
        if field.max_length is not None and len(value) > field.max_length:
            return f"Ensure this field has no more than {field.max_length} characters."
    return None


class StrictSerializer(serializers.Serializer):
    """Rejects unknown fields (typos and mass assignment: ``tenant_id``, ``is_staff``…) with 400.

    A JSON body is also held to the types its OpenAPI schema states (see ``_json_type_error``);
    form data (a ``QueryDict``, where every value is a string) keeps DRF's coercion.
    """

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
            if not isinstance(data, QueryDict):
                wrong = {
                    name: [message]
                    for name, field in self.fields.items()
                    if name in data and not field.read_only
                    for message in [_json_type_error(field, data[name])]
                    if message
                }
                if wrong:  # reported with every other field's errors, the type message first
                    try:
                        super().to_internal_value(data)
                    except serializers.ValidationError as exc:
                        detail = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
                        raise serializers.ValidationError({**detail, **wrong}) from None
                    raise serializers.ValidationError(wrong)
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
