"""Audit events: list/filter, detail, export (audited), chain verification (audited)."""

from __future__ import annotations

import csv
import io
import json

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from apps.audit.models import EVENT_FIELDS, AuditEvent
from apps.audit.selectors import audit_event_list
from apps.audit.services import audit_record
from apps.audit.verification import audit_verify
from apps.common.api import StrictSerializer, error_responses, paginated
from apps.common.errors import AccessDenied
from apps.common.pagination import CursorPagination
from apps.tenancy.api.base import TenantApi

EXPORT_LIMIT = 100_000


class AuditEventOutput(serializers.ModelSerializer):
    details = serializers.JSONField(source="details_dict")

    class Meta:
        model = AuditEvent
        fields = list(EVENT_FIELDS)


class AuditFilter(StrictSerializer):
    action = serializers.CharField(required=False, max_length=100)
    action_prefix = serializers.CharField(required=False, max_length=100)
    outcome = serializers.ChoiceField(choices=AuditEvent.Outcome.choices, required=False)
    actor_type = serializers.ChoiceField(choices=AuditEvent.ActorType.choices, required=False)
    actor_id = serializers.CharField(required=False, max_length=64)
    target_type = serializers.CharField(required=False, max_length=100)
    target_id = serializers.CharField(required=False, max_length=100)
    request_id = serializers.CharField(required=False, max_length=64)
    since = serializers.DateTimeField(required=False)
    until = serializers.DateTimeField(required=False)


class AuditListFilter(AuditFilter):
    cursor = serializers.CharField(required=False)
    page_size = serializers.IntegerField(required=False, min_value=1, max_value=500)


class AuditExportFilter(AuditFilter):
    file_format = serializers.ChoiceField(choices=["csv", "json"], default="json")


def _params(serializer: type[serializers.Serializer]) -> list[OpenApiParameter]:
    return [
        OpenApiParameter(name, OpenApiTypes.STR, OpenApiParameter.QUERY, required=False)
        for name in list(serializer().fields)
    ]


class AuditEventListApi(TenantApi):
    pagination_class = CursorPagination  # documents the paginated envelope in the OpenAPI schema
    permission_action = "audit.list"

    @extend_schema(
        operation_id="audit_events_list",
        parameters=_params(AuditListFilter),
        responses={200: AuditEventOutput(many=True), **error_responses()},
        tags=["audit"],
    )
    def get(self, request: Request, tenant_slug: str) -> Response:
        f = AuditListFilter(data=request.query_params)
        f.is_valid(raise_exception=True)
        qs = audit_event_list(tenant=self.tenant, filters=f.validated_data)
        return paginated(self, request, qs, AuditEventOutput)


class AuditEventDetailApi(TenantApi):
    permission_action = "audit.list"

    @extend_schema(
        operation_id="audit_events_retrieve", responses={200: AuditEventOutput, **error_responses()}, tags=["audit"]
    )
    def get(self, request: Request, tenant_slug: str, event_id: int) -> Response:
        event = AuditEvent.objects.filter(pk=event_id).first()
        if event is None:
            raise AccessDenied(
                reason="not_found", tenant_id=self.tenant.pk, target_type="audit.auditevent", target_id=event_id
            )
        return Response(AuditEventOutput(event).data)


CSV_FIELDS = list(EVENT_FIELDS)


def _csv_safe(value: object) -> str:
    text = "" if value is None else str(value)
    # Spreadsheet formula injection: neutralise cells that a spreadsheet would evaluate.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def export_events(events: list[AuditEvent], fmt: str) -> tuple[bytes, str]:
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(CSV_FIELDS)
        for e in events:
            writer.writerow(
                [_csv_safe(getattr(e, f) if f != "created_at" else e.created_at.isoformat()) for f in CSV_FIELDS]
            )
        return buf.getvalue().encode(), "text/csv; charset=utf-8"
    rows = [{f: (getattr(e, f) if f != "created_at" else e.created_at.isoformat()) for f in CSV_FIELDS} for e in events]
    return json.dumps({"events": rows}, ensure_ascii=False).encode(), "application/json"


class AuditEventExportApi(TenantApi):
    permission_action = "audit.export"

    @extend_schema(
        operation_id="audit_events_export",
        summary="Export filtered events as CSV or JSON (audited)",
        parameters=_params(AuditExportFilter),
        responses={
            (200, "application/json"): OpenApiTypes.OBJECT,
            (200, "text/csv"): OpenApiTypes.STR,
            **error_responses(),
        },
        tags=["audit"],
    )
    def get(self, request: Request, tenant_slug: str) -> HttpResponse:
        f = AuditExportFilter(data=request.query_params)
        f.is_valid(raise_exception=True)
        fmt = f.validated_data.pop("file_format")
        events = list(audit_event_list(tenant=self.tenant, filters=f.validated_data).order_by("seq")[:EXPORT_LIMIT])
        filters = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in f.validated_data.items()}
        audit_record(
            action="audit.exported",
            tenant=self.tenant,
            target_type="audit.auditevent",
            details={
                "format": fmt,
                "num_events": len(events),
                "filters": filters,
                "truncated": len(events) >= EXPORT_LIMIT,
            },
        )
        body, content_type = export_events(events, fmt)
        response = HttpResponse(body, content_type=content_type)
        response["Content-Disposition"] = f'attachment; filename="audit-{self.tenant.slug}.{fmt}"'
        return response


VerifyOutput = inline_serializer(
    "AuditVerifyResult",
    {
        "ok": serializers.BooleanField(),
        "num_events": serializers.IntegerField(),
        "num_chains": serializers.IntegerField(),
        "problems": serializers.ListField(child=serializers.DictField()),
    },
)


class AuditVerifyApi(TenantApi):
    permission_action = "audit.verify"

    @extend_schema(
        operation_id="audit_verify",
        summary="Verify this tenant's hash chain (audited)",
        request=None,
        responses={200: VerifyOutput, **error_responses()},
        tags=["audit"],
    )
    def post(self, request: Request, tenant_slug: str) -> Response:
        if request.data:
            raise ValidationError(
                {name: ["Unknown field."] for name in request.data}
                if isinstance(request.data, dict)
                else {"non_field_errors": ["This endpoint takes no body."]}
            )
        result = audit_verify(tenant_id=self.tenant.pk)
        audit_record(
            action="audit.verified",
            tenant=self.tenant,
            target_type="audit.chain",
            target_id=f"t{self.tenant.pk}",
            outcome="success" if result.ok else "error",
            details={
                "ok": result.ok,
                "num_events": result.num_events,
                "problems": [p.as_dict() for p in result.problems][:10],
            },
        )
        return Response(result.as_dict())
