"""Idempotency records: a retried create with the same Idempotency-Key returns the first answer."""

from django.db import models

from apps.tenancy.models import TenantOwned


class IdempotencyRecord(TenantOwned):
    key = models.CharField(max_length=255)
    principal = models.CharField(max_length=100)
    fingerprint = models.CharField(max_length=64)
    status_code = models.PositiveSmallIntegerField(null=True)
    response_body = models.JSONField(null=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta(TenantOwned.Meta):
        constraints = [models.UniqueConstraint(fields=["tenant", "principal", "key"], name="idempotency_unique_key")]
