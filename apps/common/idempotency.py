"""``Idempotency-Key`` for create endpoints (the IETF draft's semantics).

The first request with a key runs and its 2xx response is stored with the request's fingerprint;
a retry with the same key and body gets that response back (``Idempotent-Replayed: true``); the same
key with a different body is refused (422). Concurrent duplicates serialize on the unique index.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable

from django.db import connection, transaction
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.response import Response

from apps.common.models import IdempotencyRecord

_KEY_RE = re.compile(r"^[\x21-\x7e]{1,255}$")


class IdempotencyKeyReused(exceptions.APIException):
    status_code = 422
    default_detail = "This Idempotency-Key was already used with a different request."
    default_code = "idempotency_key_reused"


def principal_of(request: Request) -> str:
    auth = request.auth
    if auth is not None and hasattr(auth, "prefix"):
        return f"key:{auth.prefix}"
    return f"user:{request.user.pk}"


def idempotent(request: Request, tenant_id: int, handler: Callable[[], Response]) -> Response:
    """Run ``handler`` at most once per (tenant, principal, Idempotency-Key)."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return handler()
    if not _KEY_RE.match(key):
        raise exceptions.ValidationError({"Idempotency-Key": ["Must be 1-255 visible ASCII characters."]})
    body = json.dumps(request.data, sort_keys=True, default=str)
    fingerprint = hashlib.sha256(f"{request.method} {request.path}\n{body}".encode()).hexdigest()
    principal = principal_of(request)
    with connection.cursor() as cur:
        cur.execute(
            """INSERT INTO common_idempotencyrecord (tenant_id, key, principal, fingerprint, created_at)
               VALUES (%s, %s, %s, %s, now()) ON CONFLICT DO NOTHING RETURNING id""",
            [tenant_id, key, principal, fingerprint],
        )
        row = cur.fetchone()
    if row is None:
        record = IdempotencyRecord.objects.get(tenant_id=tenant_id, principal=principal, key=key)
        if record.fingerprint != fingerprint or record.status_code is None:
            raise IdempotencyKeyReused()
        return Response(record.response_body, status=record.status_code, headers={"Idempotent-Replayed": "true"})
    with transaction.atomic():
        response = handler()
        if 200 <= response.status_code < 300:
            IdempotencyRecord.objects.filter(pk=row[0]).update(
                status_code=response.status_code, response_body=response.data
            )
        else:
            IdempotencyRecord.objects.filter(pk=row[0]).delete()
    return response
