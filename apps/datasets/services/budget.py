"""Privacy budget: the owner's (epsilon, delta) per dataset and the reservation ledger."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.db import connection, connections
from django.db.models import Sum
from django.utils import timezone

from apps.audit.services import audit_record, audited_change
from apps.common.exceptions import Conflict, Invalid, Unprocessable
from apps.datasets.models import BudgetReservation, PrivacyBudget
from apps.datasets.selectors import live_grants
from apps.datasets.services.common import _reject, _user_or_none
from apps.tenancy.models import Tenant
from apps.tenancy.scope import db_alias


def budget_set(*, tenant: Tenant, budget: PrivacyBudget, epsilon: Decimal, delta: Decimal) -> PrivacyBudget:
    usage = budget_usage(budget)
    committed_eps = usage["epsilon_spent"] + usage["epsilon_reserved"]
    committed_delta = usage["delta_spent"] + usage["delta_reserved"]
    if epsilon < committed_eps or delta < committed_delta:
        raise Conflict(
            f"The budget cannot go below what is already spent or reserved (ε {committed_eps}, δ {committed_delta})."
        )
    with audited_change():
        old = {"epsilon": str(budget.epsilon_total), "delta": str(budget.delta_total)}
        budget.epsilon_total, budget.delta_total = epsilon, delta
        budget.save(update_fields=["epsilon_total", "delta_total", "updated_at"])
        audit_record(
            action="budget.set",
            tenant=tenant,
            target=budget,
            details={"dataset_id": budget.dataset_id, "old": old, "epsilon": str(epsilon), "delta": str(delta)},
        )
    return budget


def _lock_budget(budget: PrivacyBudget) -> None:
    with connection.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('cohort-budget'), %s::int)", [budget.pk % 2**31])


def budget_usage(budget: PrivacyBudget) -> dict[str, Decimal]:
    """Spent and reserved (ε, δ) over ALL consumers. A grantee's own scope hides other consumers'
    reservations, so the sums come from ``cohort_budget_usage`` (SECURITY DEFINER: the four sums
    only, for a caller who may see the budget), not from a platform scope in the request path."""
    with connections[db_alias()].cursor() as cur:
        cur.execute("SELECT * FROM cohort_budget_usage(%s)", [budget.pk])
        eps_spent, delta_spent, eps_held, delta_held = cur.fetchone()
    return {
        "epsilon_spent": Decimal(eps_spent),
        "delta_spent": Decimal(delta_spent),
        "epsilon_reserved": Decimal(eps_held),
        "delta_reserved": Decimal(delta_held),
    }


def budget_reserve(
    *,
    consumer: Tenant,
    budget: PrivacyBudget,
    epsilon: Decimal,
    delta: Decimal,
    purpose: str,
    reference: str,
    created_by: Any,
) -> BudgetReservation:
    """Reserve (ε, δ) before a differentially private use starts. Refused when the reservation
    would take spent + reserved past the budget (basic sequential composition), or, for a
    grantee, past the allotment its ``process`` grant carries (``allotment_exceeded``, naming the
    grant). Called by the platform when a job or federation starts; the API lets only the
    dataset's owner reserve directly."""
    _lock_budget(budget)
    if consumer.pk != budget.tenant_id:
        _check_allotment(consumer=consumer, budget=budget, epsilon=epsilon, delta=delta)
    usage = budget_usage(budget)
    eps_after = usage["epsilon_spent"] + usage["epsilon_reserved"] + epsilon
    delta_after = usage["delta_spent"] + usage["delta_reserved"] + delta
    if eps_after > budget.epsilon_total or delta_after > budget.delta_total:
        _reject(
            consumer,
            "budget_exceeded",
            "This use would exceed the dataset's privacy budget.",
            {
                "dataset_id": budget.dataset_id,
                "epsilon_requested": str(epsilon),
                "delta_requested": str(delta),
                "epsilon_available": str(budget.epsilon_total - usage["epsilon_spent"] - usage["epsilon_reserved"]),
                "delta_available": str(budget.delta_total - usage["delta_spent"] - usage["delta_reserved"]),
            },
            action="budget.refused",
            target=budget,
        )
    with audited_change():
        res = BudgetReservation.all_tenants.create(
            tenant_id=budget.tenant_id,
            budget=budget,
            consumer=consumer,
            epsilon=epsilon,
            delta=delta,
            purpose=purpose,
            reference=reference,
            created_by=_user_or_none(created_by),
        )
        details = {
            "dataset_id": budget.dataset_id,
            "consumer": consumer.slug,
            "epsilon": str(epsilon),
            "delta": str(delta),
            "purpose": purpose[:200],
        }
        audit_record(action="budget.reserved", tenant=budget.tenant_id, target=res, details=details)
        if consumer.pk != budget.tenant_id:
            audit_record(action="budget.reserved", tenant=consumer, target=res, details=details)
    return res


def _check_allotment(*, consumer: Tenant, budget: PrivacyBudget, epsilon: Decimal, delta: Decimal) -> None:
    """A grantee's reservations on a dataset (held plus spent) stay within its grant's allotment
    (its ``process`` grant's, else its ``federate`` grant's)."""
    grants = {g.permission: g for g in live_grants(grantee=consumer, dataset_id=budget.dataset_id)}
    grant = grants.get("process") or grants.get("federate")
    if grant is None:
        raise Unprocessable(
            code="not_granted",
            message="This tenant holds no live process or federate grant on this dataset.",
            http_status=403,
        )
    zero = Decimal(0)
    # The consumer's own rows: visible in its own scope (RLS: consumer_id = the tenant in scope).
    mine = BudgetReservation.all_tenants.filter(budget_id=budget.pk, consumer=consumer)
    spent = mine.filter(state=BudgetReservation.State.COMMITTED).aggregate(e=Sum("epsilon_spent"), d=Sum("delta_spent"))
    held = mine.filter(state=BudgetReservation.State.RESERVED).aggregate(e=Sum("epsilon"), d=Sum("delta"))
    eps_used = (spent["e"] or zero) + (held["e"] or zero)
    delta_used = (spent["d"] or zero) + (held["d"] or zero)
    eps_allot = grant.epsilon_allotment if grant.epsilon_allotment is not None else zero
    delta_allot = grant.delta_allotment if grant.delta_allotment is not None else zero
    if eps_used + epsilon > eps_allot or delta_used + delta > delta_allot:
        _reject(
            consumer,
            "allotment_exceeded",
            f"This use would exceed the privacy-budget allotment of grant {grant.pk}.",
            {
                "dataset_id": budget.dataset_id,
                "grant_id": grant.pk,
                "epsilon_allotment": None if grant.epsilon_allotment is None else str(grant.epsilon_allotment),
                "delta_allotment": None if grant.delta_allotment is None else str(grant.delta_allotment),
                "epsilon_used": str(eps_used),
                "delta_used": str(delta_used),
                "epsilon_requested": str(epsilon),
                "delta_requested": str(delta),
            },
            action="budget.refused",
            target=budget,
        )


def budget_settle(
    *,
    consumer: Tenant,
    reservation: BudgetReservation,
    commit: bool,
    epsilon_spent: Decimal | None = None,
    delta_spent: Decimal | None = None,
) -> BudgetReservation:
    """Commit the actual spend (at most the reservation; defaults to all of it) or release it."""
    budget = PrivacyBudget.all_tenants.get(pk=reservation.budget_id)
    _lock_budget(budget)
    reservation.refresh_from_db()
    if reservation.state != BudgetReservation.State.RESERVED:
        raise Conflict(f"This reservation is already {reservation.state}.")
    if commit:
        e = reservation.epsilon if epsilon_spent is None else epsilon_spent
        d = reservation.delta if delta_spent is None else delta_spent
        if e > reservation.epsilon or d > reservation.delta:
            raise Invalid(fields={"epsilon_spent": ["A use cannot spend more than it reserved."]})
        reservation.epsilon_spent, reservation.delta_spent = e, d
    reservation.state = BudgetReservation.State.COMMITTED if commit else BudgetReservation.State.RELEASED
    reservation.settled_at = timezone.now()
    with audited_change():
        reservation.save(update_fields=["state", "epsilon_spent", "delta_spent", "settled_at"])
        details = {
            "dataset_id": budget.dataset_id,
            "consumer_id": reservation.consumer_id,
            "epsilon_spent": str(reservation.epsilon_spent),
            "delta_spent": str(reservation.delta_spent),
        }
        action = "budget.committed" if commit else "budget.released"
        audit_record(action=action, tenant=budget.tenant_id, target=reservation, details=details)
        if consumer.pk != budget.tenant_id:
            audit_record(action=action, tenant=consumer, target=reservation, details=details)
    return reservation
