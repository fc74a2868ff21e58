"""Text federations over the API, in-process (issue 11): drafting checks the model against the
notes, the digest an owner approves says that word counts leave the site, and a round 0 whose
notes share no word fails the federation with that reason. The run on real workers is
``tests/e2e/test_federation_notes.py``."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from typing import Any

import pytest

from apps.federation.models import Federation, Round, SiteRound
from apps.federation.services import rounds
from apps.federation.services.governance import ROUND_0_TABULAR, ROUND_0_TEXT, ROUND_0_TEXT_TOKENIZER
from apps.tenancy.models import Role
from apps.tenancy.scope import tenant_scope
from tests.apps.datasets.helpers import create_dataset, deidentify, upload_version
from tests.apps.federation.conftest import SPEC, approve_all, create_federation

pytestmark = pytest.mark.django_db(transaction=True)
KEEP = {"columns": {}, "quasi_identifiers": [], "k": None}
TEXT_SPEC: dict[str, Any] = {
    **SPEC,
    "train": {**SPEC["train"], "model": {"name": "text_bag", "params": {"dim": 8}}, "data": {"text_max_len": 16}},
}


def text_consortium(
    make_tenant: Callable[..., Any],
    member: Callable[..., Any],
    api_client_for: Callable[..., Any],
    csvs: list[bytes],
    policy: dict[str, Any],
    label: str = "department",
) -> dict[str, Any]:
    """As ``consortium``, over the given CSVs: ``lab`` coordinates, each CSV is one hospital's
    dataset, uploaded, de-identified with ``policy`` and granted ``federate`` to the lab."""
    lab = make_tenant()
    lab_user = member(Role.OWNER, tenant=lab)
    hospitals = []
    for i, data in enumerate(csvs):
        t = make_tenant()
        client = api_client_for(member(Role.OWNER, tenant=t))
        ds = create_dataset(client, t.slug, f"notes {i + 1}")
        raw = upload_version(client, t.slug, ds, data, label=label)
        deid = deidentify(client, t.slug, ds, raw["id"], policy)
        r = client.post(f"/api/v1/tenants/{t.slug}/datasets/{ds}/grants/",
                        {"grantee": lab.slug, "permission": "federate"}, format="json")  # fmt: skip
        assert r.status_code == 201, r.content
        hospitals.append({"tenant": t, "client": client, "dataset": ds, "version": deid, "grant": r.json()})
    return {"lab": lab, "lab_user": lab_user, "lab_client": api_client_for(lab_user), "hospitals": hospitals}


def _own_words(site: int, rows: int = 40) -> bytes:
    """Notes written in words no other hospital uses (``w<site>x<k>``), two departments."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["note", "department"])
    for i in range(rows):
        dept = ("cardiology", "oncology")[i % 2]
        w.writerow([" ".join(f"w{site}x{(i + k) % 6}" for k in range(12)) + ".", dept])
    return buf.getvalue().encode()


@pytest.fixture
def disjoint(make_tenant: Callable[..., Any], member: Callable[..., Any], api_client_for: Callable[..., Any]) -> Any:
    return text_consortium(make_tenant, member, api_client_for, [_own_words(s) for s in range(3)], KEEP)


def test_notes_need_a_text_model_and_owners_see_that_words_leave(disjoint: dict[str, Any]) -> None:
    c = disjoint
    r = create_federation(c, spec=SPEC)  # mlp
    assert r.status_code == 400, r.content
    assert "The model 'mlp' reads tabular input; this dataset is text." in str(r.json())
    r = create_federation(c, spec=TEXT_SPEC)
    assert r.status_code == 201, r.content
    h = c["hospitals"][0]
    inbox = h["client"].get(f"/api/v1/tenants/{h['tenant'].slug}/federation-sites/").json()["results"]
    shown = next(s for s in inbox if s["federation"] == r.json()["id"])["shown"]
    assert shown["leaves_the_site"]["round_0"] == ROUND_0_TEXT != ROUND_0_TABULAR
    assert shown["local"]["model"] == "text_bag"


def test_a_model_with_its_own_tokenizer_tells_owners_nothing_about_the_text_leaves(disjoint: dict[str, Any]) -> None:
    c = disjoint
    spec = {**TEXT_SPEC, "train": {**TEXT_SPEC["train"], "model": {"name": "minilm", "params": {}}}}
    r = create_federation(c, spec=spec)
    assert r.status_code == 201, r.content
    h = c["hospitals"][0]
    inbox = h["client"].get(f"/api/v1/tenants/{h['tenant'].slug}/federation-sites/").json()["results"]
    shown = next(s for s in inbox if s["federation"] == r.json()["id"])["shown"]
    assert shown["leaves_the_site"]["round_0"] == ROUND_0_TEXT_TOKENIZER
    assert "how many notes each word occurs" not in ROUND_0_TEXT_TOKENIZER


def test_round_0_fails_the_federation_when_the_notes_share_no_word(disjoint: dict[str, Any]) -> None:
    """The site tasks and advance run here, as the workers would run them."""
    c = disjoint
    lab = c["lab"]
    r = create_federation(c, spec=TEXT_SPEC)
    assert r.status_code == 201, r.content
    fed_id = r.json()["id"]
    approve_all(c, fed_id)
    r = c["lab_client"].post(f"/api/v1/tenants/{lab.slug}/federations/{fed_id}/start/")
    assert r.status_code == 200, r.content
    with tenant_scope(lab.pk):
        slots = list(SiteRound.objects.filter(round__federation_id=fed_id).order_by("id"))
    assert [rounds.run_site_round(lab.pk, s.pk) for s in slots] == ["submitted"] * 3
    with tenant_scope(lab.pk):
        reported = [s.statistics["text"]["tokens"] for s in SiteRound.objects.filter(pk__in=[s.pk for s in slots])]
    assert all(reported)  # each hospital reported its own words, none of which another holds
    assert rounds.advance(lab.pk, fed_id) == "failed"
    with tenant_scope(lab.pk):
        fed = Federation.objects.get(pk=fed_id)
        status = Round.objects.get(federation=fed, number=0).status
    assert fed.status == "failed" and fed.status_reason.startswith("round 0: No word is in at least 5 notes")
    assert status == "failed" and fed.encoders == {}
    assert rounds.advance(lab.pk, fed_id) == "not_running"  # a redelivered advance does nothing


def test_an_evaluate_only_site_sends_nothing_in_round_0(disjoint: dict[str, Any]) -> None:
    c = disjoint
    lab = c["lab"]
    sites = [{"dataset_id": h["dataset"]} for h in c["hospitals"]]
    sites[2]["role"] = "evaluate"
    r = create_federation(c, spec=TEXT_SPEC, sites=sites)
    assert r.status_code == 201, r.content
    fed_id = r.json()["id"]
    approve_all(c, fed_id)
    r = c["lab_client"].post(f"/api/v1/tenants/{lab.slug}/federations/{fed_id}/start/")
    assert r.status_code == 200, r.content
    with tenant_scope(lab.pk):
        slots = list(SiteRound.objects.filter(round__federation_id=fed_id).select_related("site").order_by("id"))
    assert [s.site.role for s in slots] == ["train", "train"]  # the evaluator's statistics are never merged
    assert [rounds.run_site_round(lab.pk, s.pk) for s in slots] == ["submitted"] * 2
    assert rounds.advance(lab.pk, fed_id) == "failed"  # two sites' own words: still no shared vocabulary
