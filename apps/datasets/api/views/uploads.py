"""Resumable uploads: sessions, chunks (Content-Range), completion."""

from __future__ import annotations

import re
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from apps.common.api import StrictSerializer, error_responses
from apps.common.errors import RangeNotSatisfiable
from apps.common.idempotency import idempotent
from apps.datasets import services
from apps.datasets.access import access_dataset, access_upload
from apps.datasets.api.serializers import UploadOutput, VersionOutput, upload_data
from apps.datasets.api.streaming import OctetStreamParser
from apps.datasets.models import DatasetVersion
from apps.tenancy.api.base import TenantApi


class UploadListApi(TenantApi):
    permission_actions = {"POST": "dataset.create"}

    class Input(StrictSerializer):
        dataset_id = serializers.IntegerField(min_value=1)
        filename = serializers.CharField(max_length=255)
        size = serializers.IntegerField(min_value=1)
        options = serializers.DictField(required=False, default=dict)

    @extend_schema(
        operation_id="uploads_create",
        summary="Start a resumable upload: then PUT chunks at offsets and POST complete with the SHA-256",
        request=Input,
        responses={201: UploadOutput, **error_responses(409, 413, 415, 422)},
        tags=["uploads"],
    )
    def post(self, request: Request, tenant_slug: str) -> Response:
        def create() -> Response:
            data = self.Input(data=request.data)
            data.is_valid(raise_exception=True)
            ds = access_dataset(tenant=self.tenant, dataset_id=data.validated_data["dataset_id"])
            options = services.clean_options(data.validated_data["options"])
            session = services.upload_session_create(
                tenant=self.tenant,
                dataset=ds,
                created_by=request.user,
                filename=data.validated_data["filename"],
                size=data.validated_data["size"],
                options=options,
            )
            return Response(UploadSerializerData(session), status=status.HTTP_201_CREATED)

        return idempotent(request, self.tenant.pk, create)


def UploadSerializerData(session: Any) -> Any:
    return UploadOutput(upload_data(session)).data


_RANGE_RE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class UploadDetailApi(TenantApi):
    permission_actions = {"GET": "dataset.create", "PUT": "dataset.create", "DELETE": "dataset.create"}
    parser_classes = [OctetStreamParser]  # type: ignore[misc]

    @extend_schema(
        operation_id="uploads_retrieve",
        summary="Received ranges (to resume after a dropped connection)",
        responses={200: UploadOutput, **error_responses()},
        tags=["uploads"],
    )
    def get(self, request: Request, tenant_slug: str, upload_id: int) -> Response:
        return Response(UploadSerializerData(access_upload(tenant=self.tenant, upload_id=upload_id)))

    @extend_schema(
        operation_id="uploads_put_chunk",
        summary="Store one chunk at a byte offset (?offset=N or Content-Range); retrying a chunk is safe",
        parameters=[OpenApiParameter("offset", int, description="Byte offset (or send Content-Range)")],
        request={"application/octet-stream": OpenApiTypes.BINARY},
        responses={200: UploadOutput, **error_responses(409, 413, 415, 416, 422)},
        tags=["uploads"],
    )
    def put(self, request: Request, tenant_slug: str, upload_id: int) -> Response:
        session = access_upload(tenant=self.tenant, upload_id=upload_id)
        length_raw = request.META.get("CONTENT_LENGTH") or ""
        if not length_raw.isdigit() or int(length_raw) < 1:
            raise ValidationError({"Content-Length": ["A chunk needs a positive Content-Length."]})
        length = int(length_raw)
        crange = request.META.get("HTTP_CONTENT_RANGE")
        if crange:
            m = _RANGE_RE.match(crange.strip())
            if not m or int(m[2]) - int(m[1]) + 1 != length:
                raise ValidationError({"Content-Range": ["Use 'bytes first-last/total' matching Content-Length."]})
            if m[3] != "*" and int(m[3]) != session.size:
                raise RangeNotSatisfiable(
                    f"Content-Range total {m[3]} is not the declared size ({session.size} bytes).", size=session.size
                )
            offset = int(m[1])
        else:
            raw = request.query_params.get("offset", "")
            if not raw.isdigit():
                raise ValidationError({"offset": ["Give ?offset=N (bytes) or a Content-Range header."]})
            offset = int(raw)
        services.upload_part_put(tenant=self.tenant, session=session, offset=offset, stream=request.data, length=length)
        return Response(UploadSerializerData(session))

    @extend_schema(
        operation_id="uploads_abort", responses={200: UploadOutput, **error_responses(409)}, tags=["uploads"]
    )
    def delete(self, request: Request, tenant_slug: str, upload_id: int) -> Response:
        session = access_upload(tenant=self.tenant, upload_id=upload_id)
        return Response(UploadSerializerData(services.upload_abort(tenant=self.tenant, session=session)))


class UploadCompleteApi(TenantApi):
    permission_actions = {"POST": "dataset.create"}

    class Input(StrictSerializer):
        sha256 = serializers.RegexField(r"^[0-9a-fA-F]{64}$", help_text="SHA-256 of the whole file (hex)")

    @extend_schema(
        operation_id="uploads_complete",
        summary="Check the chunks and the SHA-256, then create the version (201 processed, 202 on a worker)",
        request=Input,
        responses={
            201: VersionOutput,
            202: OpenApiResponse(VersionOutput, description="Large file: processing on a worker"),
            **error_responses(409, 415, 422),
        },
        tags=["uploads"],
    )
    def post(self, request: Request, tenant_slug: str, upload_id: int) -> Response:
        session = access_upload(tenant=self.tenant, upload_id=upload_id)
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        version = services.upload_complete(
            tenant=self.tenant, session=session, sha256=data.validated_data["sha256"], created_by=request.user
        )
        code = status.HTTP_201_CREATED if version.status == DatasetVersion.Status.READY else status.HTTP_202_ACCEPTED
        return Response(VersionOutput(version).data, status=code)
