"""The one access helper: fetch one object the caller's tenant scope lets it see, or deny.

Every app's ``access.py`` fetches through :func:`get_or_deny`. The queryset is already scoped (the
tenant managers answer only the tenant in scope; RLS enforces the same in the database), so a
missing object and another tenant's object are the same miss: both raise :class:`NotFound` (404,
same body), carrying what the audit trail records about the denial. Existence never leaks.
"""

from __future__ import annotations

from typing import Any, TypeVar

from django.db import models

from apps.common.exceptions import NotFound

M = TypeVar("M", bound=models.Model)


def get_or_deny(queryset: models.QuerySet[M], pk: Any, *, tenant: Any, **filters: Any) -> M:
    """``queryset.filter(pk=pk, **filters).first()``, or an audited 404 naming the model."""
    obj = queryset.filter(pk=pk, **filters).first()
    if obj is None:
        raise NotFound(
            reason="not_found",
            tenant_id=getattr(tenant, "pk", None),
            target_type=queryset.model._meta.label_lower,
            target_id=pk,
        )
    return obj
