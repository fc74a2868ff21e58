"""A federation's event log: the next per-federation sequence number, published after commit."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from apps.federation.live import publish_federation_event
from apps.federation.models import Federation, FederationEvent
from apps.tenancy.scope import tenant_scope


def append_event(
    federation: Federation,
    kind: str,
    data: dict[str, Any],
    *,
    round_number: int | None = None,
    site_id: int | None = None,
) -> int:
    """Append one event (its own short transaction, or the caller's) in the coordinator's scope."""
    with tenant_scope(federation.tenant_id):
        seq = (
            Federation.objects.select_for_update().filter(pk=federation.pk).values_list("event_seq", flat=True).first()
            or 0
        ) + 1
        Federation.objects.filter(pk=federation.pk).update(event_seq=seq)
        event = FederationEvent.objects.create(
            tenant_id=federation.tenant_id,
            federation_id=federation.pk,
            seq=seq,
            kind=kind,
            round_number=round_number,
            site_id=site_id,
            data=data,
        )
        transaction.on_commit(lambda: publish_federation_event(event))
    return seq


def append_events(federation: Federation, items: list[tuple[str, dict[str, Any], int | None, int | None]]) -> int:
    """Append several events at once, in order: (kind, data, round_number, site_id) each. One
    transaction and one sequence bump for all (a round's opening and its sites' selection). Returns
    the last sequence number."""
    if not items:
        return 0
    with tenant_scope(federation.tenant_id):
        first = (
            Federation.objects.select_for_update().filter(pk=federation.pk).values_list("event_seq", flat=True).first()
            or 0
        ) + 1
        last = first + len(items) - 1
        Federation.objects.filter(pk=federation.pk).update(event_seq=last)
        rows = [
            FederationEvent(
                tenant_id=federation.tenant_id, federation_id=federation.pk, seq=first + i, kind=kind,
                round_number=number, site_id=site_id, data=data,
            )
            for i, (kind, data, number, site_id) in enumerate(items)
        ]  # fmt: skip
        events = FederationEvent.objects.bulk_create(rows)

        def publish_all() -> None:
            for e in events:
                publish_federation_event(e)

        transaction.on_commit(publish_all)
    return last
