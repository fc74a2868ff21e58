"""Dropouts on real workers: ten hospitals, three of which run their own site worker
(``COHORT_FL_OWN_WORKER_TENANTS``) that is offline for the whole run, so 30% of the sites drop out
of every round. With ``quorum: 7`` every round closes at its deadline with the seven updates that
came in; the platform's own deadline task (``advance`` sent with the deadline as countdown; no
sweep runs here) closes each round at most 2 s after its deadline. Writes
``reports/FL-dropouts.json``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from apps.federation.models import Round, SiteRound
from apps.tenancy.models import Role
from apps.tenancy.scope import tenant_scope
from tests.apps.datasets.helpers import create_dataset, deidentify, upload_version
from tests.apps.federation.conftest import KEEP, SPEC, hospital_splits
from tests.conftest import write_report
from tests.e2e.test_federation_workers import _finished, _kill9, _start_worker, _wait, fl_env  # noqa: F401

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
N_SITES, OFFLINE, ROUNDS, DEADLINE = 10, 3, 3, 4


@pytest.fixture
def ten_hospitals(
    make_tenant: Callable[..., Any], member: Callable[..., Any], api_client_for: Callable[..., Any]
) -> dict[str, Any]:
    lab = make_tenant()
    lab_client = api_client_for(member(Role.OWNER, tenant=lab))
    hospitals = []
    for i, data in enumerate(hospital_splits(N_SITES)):
        t = make_tenant()
        client = api_client_for(member(Role.OWNER, tenant=t))
        ds = create_dataset(client, t.slug, f"breast cancer {i + 1}")
        raw = upload_version(client, t.slug, ds, data, label="target")
        deidentify(client, t.slug, ds, raw["id"], KEEP)
        r = client.post(f"/api/v1/tenants/{t.slug}/datasets/{ds}/grants/",
                        {"grantee": lab.slug, "permission": "federate"}, format="json")  # fmt: skip
        assert r.status_code == 201, r.content
        hospitals.append({"tenant": t, "client": client, "dataset": ds})
    return {"lab": lab, "lab_client": lab_client, "hospitals": hospitals}


def test_thirty_percent_of_sites_drop_every_round_and_quorum_closes_it_on_time(
    ten_hospitals: dict[str, Any],
    fl_env: dict[str, str],  # noqa: F811
    settings: Any,
    tmp_path: Path,
) -> None:
    c = ten_hospitals
    lab = c["lab"]
    offline = [h["tenant"].slug for h in c["hospitals"][-OFFLINE:]]
    settings.COHORT_FL_OWN_WORKER_TENANTS = offline  # their tasks go to fl.<slug>: nobody consumes it
    env = {**fl_env, "COHORT_FL_OWN_WORKER_TENANTS": ",".join(offline)}
    spec = {**SPEC, "train": {**SPEC["train"], "epochs": 1}, "rounds": ROUNDS, "quorum": N_SITES - OFFLINE,
            "min_participants": N_SITES - OFFLINE, "round_deadline_seconds": DEADLINE}  # fmt: skip
    r = c["lab_client"].post(
        f"/api/v1/tenants/{lab.slug}/federations/",
        {"name": "dropouts", "spec": spec, "sites": [{"dataset_id": h["dataset"]} for h in c["hospitals"]]},
        format="json",
    )
    assert r.status_code == 201, r.content
    fed = r.json()
    for h in c["hospitals"]:
        slug = h["tenant"].slug
        site = next(s for s in h["client"].get(f"/api/v1/tenants/{slug}/federation-sites/").json()["results"]
                    if s["federation"] == fed["id"])  # fmt: skip
        r = h["client"].post(f"/api/v1/tenants/{slug}/federation-sites/{site['id']}/approve/",
                             {"digest": site["digest"]}, format="json")  # fmt: skip
        assert r.status_code == 200, r.content
    log = tmp_path / "workers.log"
    worker = _start_worker(env, log, "online")
    try:
        # The rounds' 4 s deadlines are for the sites' work, not the worker's start-up (Django,
        # torch and the tasks imported): start the clock once it says it is ready.
        _wait("the worker to be ready", lambda: " ready." in log.read_text(errors="replace"), 120, log, lambda: None)
        r = c["lab_client"].post(f"/api/v1/tenants/{lab.slug}/federations/{fed['id']}/start/")
        assert r.status_code == 200, r.content
        # no sweep: the deadline task alone must close the rounds
        done = _finished(lab.pk, fed["id"], log, 60 + (ROUNDS + 2) * DEADLINE * 3, lambda: None)
    finally:
        _kill9(worker)
    assert done.status == "completed", (done.status_reason, log.read_text()[-4000:])
    with tenant_scope(lab.pk):
        rounds = list(Round.objects.filter(federation_id=fed["id"]).order_by("number"))
        states = {r.number: sorted(SiteRound.objects.filter(round=r).values_list("state", flat=True)) for r in rounds}
    late = [(r.closed_at - r.deadline).total_seconds() for r in rounds]
    dropped = {n: s.count("timed_out") for n, s in states.items()}
    submitted = {n: s.count("submitted") for n, s in states.items()}
    trained = {r.number: len(r.participants) for r in rounds if r.kind == "train"}
    figures = {
        "sites": N_SITES,
        "dropped_per_round": dropped,
        "aggregated_per_training_round": trained,
        "close_after_deadline_seconds": [round(x, 3) for x in late],
        "worst_close_after_deadline_seconds": round(max(late), 3),
        "final_accuracy": done.result["final_metrics"].get("accuracy"),
    }
    ok = (
        all(d == OFFLINE for d in dropped.values())
        and all(n == N_SITES - OFFLINE for n in submitted.values())
        and all(n == N_SITES - OFFLINE for n in trained.values())
        and all(0 <= x <= 2.0 for x in late)
    )
    write_report("FL-dropouts", figures, ok)
    assert [r.kind for r in rounds] == ["statistics", *["train"] * ROUNDS, "evaluate"]
    assert all(d == OFFLINE for d in dropped.values()), states
    assert all(n == N_SITES - OFFLINE for n in trained.values()), trained
    assert all(0 <= x <= 2.0 for x in late), figures
    assert figures["final_accuracy"] is not None and figures["final_accuracy"] > 0.85, figures
