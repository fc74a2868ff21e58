"""Admission of site tasks: the fl pool's capacity, the coordinator's quota, fair share between
coordinators, wait reasons (API, stream, timed-out slots), owners' own workers, usage charged to
the coordinator. No worker consumes here: the pass's decisions are read from the slots."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.federation.models import Federation, FederationEvent, Round, SiteRound
from apps.federation.services import rounds
from apps.federation.services.admission import admit_sites
from apps.tenancy.models import Role
from apps.tenancy.scope import tenant_scope
from apps.training import scheduler
from apps.training.models import ResourceUsage
from tests.apps.federation.conftest import approve_all, create_federation

pytestmark = pytest.mark.django_db(transaction=True)


def _start(c: dict[str, Any], **extra: Any) -> int:
    r = create_federation(c, **extra)
    assert r.status_code == 201, r.content
    fed_id = r.json()["id"]
    approve_all(c, fed_id)
    r = c["lab_client"].post(f"/api/v1/tenants/{c['lab'].slug}/federations/{fed_id}/start/")
    assert r.status_code == 200, r.content
    return int(fed_id)


def _slots(tenant_id: int, fed_id: int) -> list[SiteRound]:
    with tenant_scope(tenant_id):
        return list(SiteRound.objects.filter(round__federation_id=fed_id).order_by("id"))


def _done(tenant_id: int, slot_id: int) -> None:
    """The slot's task ended (what the site task records), freeing its place in the pool."""
    with tenant_scope(tenant_id):
        SiteRound.objects.filter(pk=slot_id).update(state=SiteRound.State.SUBMITTED, finished_at=timezone.now())


def test_the_pool_admits_up_to_capacity_and_the_rest_wait_with_a_reason(
    consortium: dict[str, Any], settings: Any
) -> None:
    settings.COHORT_POOL_FL_SLOTS = 2
    c = consortium
    lab = c["lab"]
    fed_id = _start(c)
    slots = _slots(lab.pk, fed_id)
    assert len(slots) == 3 and all(s.queue == "fl" for s in slots)
    admitted = [s for s in slots if s.admitted_at is not None]
    waiting = [s for s in slots if s.admitted_at is None]
    assert len(admitted) == 2 and len(waiting) == 1
    assert all(s.wait_reason == "" and s.enqueued_at is not None for s in admitted)
    assert waiting[0].wait_reason == "waiting for a free fl slot (2/2 in use); position 1 in the fl queue"
    assert waiting[0].state == SiteRound.State.SELECTED and waiting[0].enqueued_at is None
    # A stray delivery for a slot not yet admitted is ignored: it waits its turn.
    assert rounds.claim(lab.pk, waiting[0].pk) is None
    # The coordinator sees why, over REST and on the stream.
    body = c["lab_client"].get(f"/api/v1/tenants/{lab.slug}/federations/{fed_id}/sites/").json()
    reasons = [slot["wait_reason"] for entry in body for slot in entry["slots"]]
    assert sorted(reasons) == ["", "", waiting[0].wait_reason]
    with tenant_scope(lab.pk):
        streamed = [e.data for e in FederationEvent.objects.filter(federation_id=fed_id, kind="site")]
        admissions = sum(
            len(e.details_dict["slots"])
            for e in AuditEvent.objects.filter(tenant_id=lab.pk, action="federation.sites_admitted")
        )
    assert {"state": "selected", "wait_reason": waiting[0].wait_reason} in streamed
    assert admissions == 2
    # Another pass changes nothing while the pool is full (no duplicate admission or event).
    assert admit_sites().admitted == []
    # A site task ends: the waiting slot is admitted, its reason cleared (and streamed).
    _done(lab.pk, admitted[0].pk)
    assert admit_sites().admitted == [waiting[0].pk]
    with tenant_scope(lab.pk):
        slot = SiteRound.objects.get(pk=waiting[0].pk)
        last = FederationEvent.objects.filter(federation_id=fed_id, kind="site").order_by("-seq").first()
    assert slot.admitted_at is not None and slot.wait_reason == "" and slot.enqueued_at is not None
    assert last is not None and last.data == {"state": "selected", "wait_reason": ""}
    assert last.site_id == slot.site_id


def test_the_coordinators_quota_caps_its_site_tasks(consortium: dict[str, Any]) -> None:
    c = consortium
    lab = c["lab"]
    scheduler.quota_set(tenant_id=lab.pk, changes={"max_site_tasks": 1}, actor_label="test")
    fed_id = _start(c)
    slots = _slots(lab.pk, fed_id)
    assert sum(s.admitted_at is not None for s in slots) == 1
    assert {s.wait_reason for s in slots if s.admitted_at is None} == {"coordinator quota: 1/1 site tasks running"}
    r = c["lab_client"].get(f"/api/v1/tenants/{lab.slug}/training/quota/")  # the override and the value in force
    assert r.status_code == 200, r.content
    assert r.json()["quota"]["max_site_tasks"] == 1 and r.json()["overrides"]["max_site_tasks"] == 1


def test_fair_share_alternates_coordinators_when_the_pool_is_short(
    consortium: dict[str, Any], settings: Any, make_tenant: Any, member: Any, api_client_for: Any
) -> None:
    settings.COHORT_POOL_FL_SLOTS = 0
    c = consortium
    first = _start(c)
    # A second lab coordinates a federation over the same hospitals' datasets.
    lab2 = make_tenant()
    client2 = api_client_for(member(Role.OWNER, tenant=lab2))
    for h in c["hospitals"]:
        r = h["client"].post(
            f"/api/v1/tenants/{h['tenant'].slug}/datasets/{h['dataset']}/grants/",
            {"grantee": lab2.slug, "permission": "federate"}, format="json",
        )  # fmt: skip
        assert r.status_code == 201, r.content
    c2 = {**c, "lab": lab2, "lab_client": client2}
    second = _start(c2)
    assert all(s.admitted_at is None for s in _slots(c["lab"].pk, first) + _slots(lab2.pk, second))
    assert {s.wait_reason for s in _slots(c["lab"].pk, first)} >= {"no fl workers in this pool (capacity 0)"}
    # Three places open: the first lab has never been served either, so the tie goes by tenant id,
    # then the coordinators alternate one slot at a time.
    settings.COHORT_POOL_FL_SLOTS = 3
    done = admit_sites()
    mine = {s.pk for s in _slots(c["lab"].pk, first)}
    order = ["lab" if pk in mine else "lab2" for pk in done.admitted]
    assert order in (["lab", "lab2", "lab"], ["lab2", "lab", "lab2"])
    # The rest wait in the same fair-share order, the coordinator served last going first.
    positions = sorted((reason, pk) for pk, reason in done.waiting.items())
    assert [r for r, _ in positions] == [
        f"waiting for a free fl slot (3/3 in use); position {i} in the fl queue" for i in (1, 2, 3)
    ]
    first_waiting = positions[0][1]
    assert (first_waiting in mine) == (order[-1] == "lab2")


def test_an_owners_own_worker_is_outside_the_pool(consortium: dict[str, Any], settings: Any) -> None:
    c = consortium
    own = c["hospitals"][0]["tenant"]
    settings.COHORT_FL_OWN_WORKER_TENANTS = [own.slug]
    settings.COHORT_POOL_FL_SLOTS = 0
    fed_id = _start(c)
    slots = _slots(c["lab"].pk, fed_id)
    by_queue = {s.queue: s for s in slots}
    assert set(by_queue) == {"fl", f"fl.{own.slug}"}
    assert by_queue[f"fl.{own.slug}"].admitted_at is not None
    assert [s.admitted_at for s in slots if s.queue == "fl"] == [None, None]


def test_a_slot_still_waiting_at_the_deadline_times_out_with_its_reason(
    consortium: dict[str, Any], settings: Any
) -> None:
    settings.COHORT_POOL_FL_SLOTS = 0
    c = consortium
    lab = c["lab"]
    fed_id = _start(c)
    with tenant_scope(lab.pk):
        Round.objects.filter(federation_id=fed_id).update(deadline=timezone.now() - timedelta(seconds=1))
    assert rounds.advance(lab.pk, fed_id) == "failed"  # no update by the deadline: quorum not reached
    slots = _slots(lab.pk, fed_id)
    assert {s.state for s in slots} == {SiteRound.State.TIMED_OUT}
    assert {s.reason for s in slots} == {
        "round closed at the deadline before the site task was admitted (no fl workers in this pool (capacity 0))"
    }
    with tenant_scope(lab.pk):
        fed = Federation.objects.get(pk=fed_id)
    assert fed.status == Federation.Status.FAILED and "quorum not reached" in fed.status_reason


def test_site_task_time_is_charged_to_the_coordinator(consortium: dict[str, Any], settings: Any) -> None:
    c = consortium
    lab = c["lab"]
    fed_id = _start(c)
    with tenant_scope(lab.pk):
        fed = Federation.objects.get(pk=fed_id)
    from workers.federated.spec import FederationSpec

    fspec = FederationSpec.from_dict(fed.spec)
    slot = _slots(lab.pk, fed_id)[0]
    rounds._charge(fed, fspec, slot, 12.5)
    own = SiteRound(queue="fl.someone")
    rounds._charge(fed, fspec, own, 99.0)  # an owner's machine: not the platform's time
    with tenant_scope(lab.pk):
        used = list(ResourceUsage.objects.filter(tenant_id=lab.pk).values_list("resource", "seconds"))
    assert used == [("cpu", 12.5)]
    for h in c["hospitals"]:
        with tenant_scope(h["tenant"].pk):
            assert not ResourceUsage.objects.filter(tenant_id=h["tenant"].pk).exists()
