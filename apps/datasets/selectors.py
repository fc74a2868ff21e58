"""Dataset reads. Own datasets go through the tenant-scoped managers; datasets shared with the
tenant in scope go through the explicit ``all_tenants`` bypass filtered by a live grant, and the
database's row-level security enforces the same grant rule independently."""

from __future__ import annotations

from typing import Any

from django.db.models import Q, QuerySet
from django.utils import timezone

from apps.common.exceptions import NotFound
from apps.datasets.models import BudgetReservation, Dataset, DatasetGrant, DatasetVersion, PrivacyBudget
from apps.tenancy.models import Tenant
from apps.vault.models import DataKey


def dataset_list(*, tenant: Tenant, q: str = "", status: str = "active") -> QuerySet[Dataset]:
    qs = Dataset.objects.filter(tenant=tenant)
    if status != "all":
        qs = qs.filter(status=status)
    if q:
        qs = qs.filter(Q(name__icontains=q) | Q(description__icontains=q))
    return qs.select_related("created_by")


def version_list(*, dataset: Dataset, kind: str = "") -> QuerySet[DatasetVersion]:
    qs = DatasetVersion.objects.filter(dataset=dataset)
    if kind:
        qs = qs.filter(kind=kind)
    return qs


def latest_version(*, dataset: Dataset) -> DatasetVersion | None:
    """The dataset's newest version of any kind and status (the list's summary column)."""
    return DatasetVersion.objects.filter(dataset=dataset).order_by("-number").first()


def own_active_dataset(*, dataset_id: int) -> Dataset | None:
    """The tenant in scope's own active dataset, or None (no audited denial: the caller may go on
    to look for a dataset granted to it)."""
    return Dataset.objects.filter(pk=dataset_id, status=Dataset.Status.ACTIVE).first()


def active_tenant(*, slug: str) -> Tenant | None:
    """An active tenant by slug (a grant's grantee)."""
    return Tenant.objects.filter(slug=slug, status=Tenant.Status.ACTIVE).first()


def grant_list(*, dataset: Dataset) -> QuerySet[DatasetGrant]:
    return DatasetGrant.objects.filter(dataset=dataset).select_related("grantee")


def _live(now: Any = None) -> Q:
    now = now or timezone.now()
    return Q(revoked_at__isnull=True) & (Q(expires_at__isnull=True) | Q(expires_at__gt=now))


def live_grants(*, grantee: Tenant, dataset_id: int | None = None) -> QuerySet[DatasetGrant]:
    qs = DatasetGrant.all_tenants.filter(_live(), grantee=grantee, dataset__status=Dataset.Status.ACTIVE)
    if dataset_id is not None:
        qs = qs.filter(dataset_id=dataset_id)
    return qs


def grantee_permissions(*, grantee: Tenant, dataset_id: int) -> set[str]:
    """The permissions ``grantee`` holds on another tenant's dataset through live grants."""
    return set(live_grants(grantee=grantee, dataset_id=dataset_id).values_list("permission", flat=True))


def shared_dataset_list(*, tenant: Tenant, q: str = "") -> QuerySet[Dataset]:
    ids = live_grants(grantee=tenant).values("dataset_id")
    qs = Dataset.all_tenants.filter(pk__in=ids, status=Dataset.Status.ACTIVE).exclude(tenant=tenant)
    if q:
        qs = qs.filter(Q(name__icontains=q) | Q(description__icontains=q))
    return qs.select_related("tenant")


def shared_dataset_get(*, tenant: Tenant, dataset_id: int) -> tuple[Dataset, set[str]]:
    """A dataset another tenant granted to ``tenant``, with the live permissions. 404 otherwise."""
    perms = grantee_permissions(grantee=tenant, dataset_id=dataset_id)
    ds = Dataset.all_tenants.filter(pk=dataset_id, status=Dataset.Status.ACTIVE).exclude(tenant=tenant).first()
    if ds is None or not perms:
        raise NotFound(reason="not_granted", tenant_id=tenant.pk, target_type="datasets.dataset", target_id=dataset_id)
    return ds, perms


def dataset_for_federation(*, dataset_id: int) -> Dataset:
    """An active dataset the tenant in scope owns or holds a live grant on (RLS decides what is
    visible; callers check ``dataset_access(..., permission="federate")`` first)."""
    ds = Dataset.all_tenants.filter(pk=dataset_id, status=Dataset.Status.ACTIVE).first()
    if ds is None:
        raise NotFound(reason="not_granted", target_type="datasets.dataset", target_id=dataset_id)
    return ds


def latest_deidentified(*, dataset: Dataset, shared: bool = False) -> DatasetVersion | None:
    """The newest ready de-identified version (what training and grantees use)."""
    manager = DatasetVersion.all_tenants if shared else DatasetVersion.objects
    return (
        manager.filter(dataset_id=dataset.pk, kind=DatasetVersion.Kind.DEIDENTIFIED, status=DatasetVersion.Status.READY)
        .order_by("-number")
        .first()
    )


def dataset_access(*, consumer: Tenant, dataset_id: int, permission: str = "process") -> bool:
    """The gate every use of a dataset checks, before it starts and at every step: the owner, or
    a tenant holding a live grant (``download`` implies ``process``; both imply ``federate``).
    Revocation is seen at once."""
    ds = Dataset.all_tenants.filter(pk=dataset_id, status=Dataset.Status.ACTIVE).first()
    if ds is None:
        return False
    if ds.tenant_id == consumer.pk:
        return True
    perms = set(live_grants(grantee=consumer, dataset_id=dataset_id).values_list("permission", flat=True))
    if permission == "federate":
        return bool(perms & {"federate", "process", "download"})
    return permission in perms or (permission == "process" and "download" in perms)


def budget_for(*, dataset: Dataset) -> PrivacyBudget:
    return PrivacyBudget.all_tenants.get(dataset_id=dataset.pk)


def reservation_list(*, tenant: Tenant, budget: PrivacyBudget) -> QuerySet[BudgetReservation]:
    """The owner sees every reservation of its dataset; a grantee sees its own."""
    qs = BudgetReservation.all_tenants.filter(budget=budget).select_related("consumer")
    if budget.tenant_id != tenant.pk:
        qs = qs.filter(consumer=tenant)
    return qs


def version_key(*, consumer: Tenant, version: DatasetVersion, permission: str = "process") -> DataKey:
    """The data key a version is encrypted under. A grantee may use the owner's key only while it
    holds a live grant for ``permission`` (checked here, again; a federation site's task asks for
    ``federate``): the key row is read in the owner's scope."""
    from apps.tenancy.scope import tenant_scope

    if version.data_key_id is None:
        raise NotFound(
            reason="not_ready", tenant_id=consumer.pk, target_type="datasets.datasetversion", target_id=version.pk
        )
    if version.tenant_id == consumer.pk:
        return DataKey.objects.get(pk=version.data_key_id)
    if not dataset_access(consumer=consumer, dataset_id=version.dataset_id, permission=permission):
        raise NotFound(
            reason="not_granted", tenant_id=consumer.pk, target_type="datasets.datasetversion", target_id=version.pk
        )
    with tenant_scope(version.tenant_id):
        return DataKey.objects.get(pk=version.data_key_id)


# --- what a grantee sees of a version --------------------------------------------------------------

GRANTEE_NULL_FRACTION_STEP = 0.05


def grantee_min_count() -> int:
    """k: category counts below it are suppressed in what grantees see (``COHORT_GRANTEE_MIN_COUNT``)."""
    from django.conf import settings

    return max(1, int(getattr(settings, "COHORT_GRANTEE_MIN_COUNT", 5)))


def _suppress(counts: dict[str, int], k: int) -> dict[str, int | None]:
    """Counts below ``k`` become null; if what is suppressed adds up to less than ``k`` (so the row
    count minus the released counts would give it away), the next smallest counts go too."""
    hidden = {c for c, n in counts.items() if n < k}
    while hidden and sum(counts[c] for c in hidden) < k:
        rest = sorted((n, c) for c, n in counts.items() if c not in hidden)
        if not rest:
            break
        hidden.add(rest[0][1])
    return {c: (None if c in hidden else int(n)) for c, n in counts.items()}


def grantee_view(version: DatasetVersion) -> dict[str, Any]:
    """What a grantee of ``version`` (a de-identified version) sees, safe by construction: the
    schema (name, type, role), the row count, each column's null fraction rounded to 5 %, and the
    label's class counts with counts below k suppressed (null). Never a minimum, maximum, mean,
    standard deviation, length or distinct count: a minimum or maximum is one person's value. The
    owner sees the same object as ``grantee_view`` on the version."""
    schema = version.schema or {}
    report = version.validation or {}
    k = grantee_min_count()
    step = GRANTEE_NULL_FRACTION_STEP
    columns = []
    reported = {c.get("name"): c for c in report.get("columns") or [] if isinstance(c, dict)}
    for col in schema.get("columns") or []:
        rep = reported.get(col.get("name")) or {}
        ratio = rep.get("null_ratio")
        if ratio is None and isinstance(rep.get("nulls"), int) and version.rows:
            ratio = rep["nulls"] / version.rows
        columns.append(
            {
                "name": col.get("name"),
                "type": col.get("type"),
                "role": col.get("role"),
                "null_fraction": None if ratio is None else round(round(float(ratio) / step) * step, 2),
            }
        )
    balance = report.get("class_balance")
    return {
        "rows": version.rows,
        "label": schema.get("label"),
        "task": schema.get("task"),
        "columns": columns,
        "class_counts": None if not isinstance(balance, dict) else _suppress(balance, k),
        "min_count": k,
        "null_fraction_step": step,
    }
