"""The optional central evaluation set (issue 11): the coordinator names one dataset of its own as
a site with role ``central`` (``evaluation.central``); every round's global model is scored on all
its rows, never trained on; its metrics are reported apart, "best" is chosen on them, and the
other tenants see none of them. The site tasks and ``advance`` run here, as the workers would."""

from __future__ import annotations

import math
from typing import Any

import pytest

from apps.federation.models import Federation, FederationSite, Round, SiteRound
from apps.federation.services import rounds
from apps.tenancy.scope import tenant_scope
from apps.training.models import ModelVersion
from tests.apps.datasets.helpers import create_dataset, deidentify, upload_version
from tests.apps.federation.conftest import KEEP, SPEC, approve_all, create_federation
from tests.fl_data import hospital_splits

pytestmark = pytest.mark.django_db(transaction=True)
CENTRAL_SPEC: dict[str, Any] = {**SPEC, "rounds": 3, "evaluation": {"central": True, "register": "best"}}


def _lab_dataset(c: dict[str, Any], name: str = "held-out set") -> tuple[int, dict[str, Any]]:
    """A held-out breast-cancer share of the lab's own (another seed's split)."""
    client, slug = c["lab_client"], c["lab"].slug
    ds = create_dataset(client, slug, name)
    raw = upload_version(client, slug, ds, hospital_splits(n_sites=3, seed=7)[0], label="target")
    return ds, deidentify(client, slug, ds, raw["id"], KEEP)


def _sites(c: dict[str, Any], central: int, evaluate_last: bool = False) -> list[dict[str, Any]]:
    sites: list[dict[str, Any]] = [{"dataset_id": h["dataset"]} for h in c["hospitals"]]
    if evaluate_last:
        sites[-1]["role"] = "evaluate"
    return [*sites, {"dataset_id": central, "role": "central"}]


def _approve_own(c: dict[str, Any], fed_id: int) -> None:
    client, slug = c["lab_client"], c["lab"].slug
    inbox = client.get(f"/api/v1/tenants/{slug}/federation-sites/").json()["results"]
    site = next(s for s in inbox if s["federation"] == fed_id)
    assert site["role"] == "central"
    assert site["shown"]["leaves_the_site"]["round_0"] == "nothing (this site does not train)"
    assert "all this dataset's rows" in site["shown"]["leaves_the_site"]["training_rounds"]
    r = client.post(f"/api/v1/tenants/{slug}/federation-sites/{site['id']}/approve/", {"digest": site["digest"]},
                    format="json")  # fmt: skip
    assert r.status_code == 200, r.content


def _run_to_the_end(lab_id: int, fed_id: int, ran: tuple[str, ...] = ("submitted",)) -> list[str]:
    outcomes = []
    for _ in range(10):
        with tenant_scope(lab_id):
            slots = list(SiteRound.objects.filter(round__federation_id=fed_id, state=SiteRound.State.SELECTED))
        assert all(rounds.run_site_round(lab_id, s.pk) in ran for s in slots)
        outcomes.append(rounds.advance(lab_id, fed_id))
        if outcomes[-1] != "closed":
            return outcomes
    raise AssertionError(outcomes)


def _events(client: Any, url: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while url:
        page = client.get(url).json()
        out += page["results"]
        url = page["next"]
    return out


def test_every_model_is_scored_on_the_central_set_apart_and_best_is_chosen_on_it(
    consortium: dict[str, Any],
) -> None:
    c, lab = consortium, consortium["lab"]
    central_ds, central_version = _lab_dataset(c)
    # Two hospitals train, the third only evaluates, and the lab's own set is the central one.
    r = create_federation(c, spec=CENTRAL_SPEC, sites=_sites(c, central_ds, evaluate_last=True))
    assert r.status_code == 201, r.content
    fed_id = r.json()["id"]
    approve_all(c, fed_id)
    start = f"/api/v1/tenants/{lab.slug}/federations/{fed_id}/start/"
    r = c["lab_client"].post(start)  # the central set is not approved yet
    assert r.status_code == 409 and r.json()["error"]["code"] == "approvals_missing", r.content
    assert "central set" in r.json()["error"]["message"]
    _approve_own(c, fed_id)
    assert c["lab_client"].post(start).status_code == 200
    with tenant_scope(lab.pk):
        round_0 = list(SiteRound.objects.filter(round__federation_id=fed_id).select_related("site"))
    assert sorted(s.site.role for s in round_0) == ["train"] * 2  # evaluators send nothing in round 0

    assert _run_to_the_end(lab.pk, fed_id) == ["closed"] * 4 + ["completed"]
    with tenant_scope(lab.pk):
        fed = Federation.objects.get(pk=fed_id)
        central = FederationSite.all_tenants.get(federation_id=fed_id, role="central")
        train_rounds = list(Round.objects.filter(federation_id=fed_id, kind="train").order_by("number"))
        final_round = Round.objects.get(federation_id=fed_id, kind="evaluate")
        central_slots = list(SiteRound.objects.filter(site=central).select_related("round").order_by("round__number"))
        model = ModelVersion.objects.get(pk=fed.model_version_id)
    rows = int(central_version["rows"])
    # Scored in every training round and the final one, on all its rows (no split), never trained on.
    assert [s.round.number for s in central_slots] == [1, 2, 3, 4]
    assert all(s.n_eval == rows and s.n_examples is None and not s.update_storage_name for s in central_slots)
    assert all(
        r.central_metrics == s.eval_metrics for r, s in zip([*train_rounds, final_round], central_slots, strict=True)
    )
    assert all(central.pk not in r.participants for r in train_rounds)
    # Apart from the sites' metrics: the round's figures are the training sites' only (the
    # evaluation-only site and the central set are reported apart), as the final ones are.
    with tenant_scope(lab.pk):
        for r in [*train_rounds, final_round]:
            trained = SiteRound.objects.filter(round=r, site__role="train")
            assert r.metrics == rounds.weighted_metrics([(s.eval_metrics, int(s.n_eval or 0)) for s in trained])
            assert set(r.central_metrics) >= {"loss", "accuracy"} and r.metrics != r.central_metrics
    result = fed.result
    assert result["central"] == {"site": central.label, "metrics": final_round.central_metrics, "n": rows,
                                 "complete": True}  # fmt: skip
    assert result["registered_metrics_on"] == "central" and model.lineage["metrics_on"] == "central"
    assert central.label not in result["per_site"] and central.label not in result["evaluation_only"]["per_site"]
    assert set(result["evaluation_only"]["per_site"]) == {"site-3"} and "site-3" not in result["per_site"]
    # "best" is chosen on the central set: round r's central metrics are round r-1's model's.
    scored = [(r.central_metrics["loss"], r.number - 1) for r in train_rounds[1:]]
    scored.append((final_round.central_metrics["loss"], final_round.number - 1))
    best = min(scored, key=lambda p: (p[0], -p[1]))
    assert result["registered_round"] == best[1]
    assert math.isclose(model.metrics["loss"], best[0])  # the registry records the central set's score
    assert {d["role"] for d in model.lineage["datasets"]} == {"train", "evaluate", "central"}

    # The coordinator sees the central figures; a hospital sees none of them.
    lab_rounds = c["lab_client"].get(f"/api/v1/tenants/{lab.slug}/federations/{fed_id}/rounds/").json()
    assert [x["central_metrics"] for x in lab_rounds if x["kind"] != "statistics"] == [
        s.eval_metrics for s in central_slots
    ]
    lab_events = _events(c["lab_client"], f"/api/v1/tenants/{lab.slug}/federations/{fed_id}/events/")
    submitted = [e for e in lab_events if e["site"] == central.pk and e["data"].get("state") == "submitted"]
    assert [e["data"]["metrics"] for e in submitted] == [s.eval_metrics for s in central_slots]
    h = c["hospitals"][0]
    base = f"/api/v1/tenants/{h['tenant'].slug}/federations/{fed_id}/"
    seen = h["client"].get(base).json()
    assert "central" not in seen["result"] and all("central_metrics" not in x for x in seen["result"]["rounds"])
    assert "registered_round" not in seen["result"]  # chosen on the coordinator's data
    assert all(x["central_metrics"] == {} for x in h["client"].get(base + "rounds/").json())
    events = _events(h["client"], base + "events/")
    assert not any(e["site"] == central.pk for e in events)  # the central site's events: none at all
    with tenant_scope(lab.pk):
        own = FederationSite.all_tenants.get(federation_id=fed_id, dataset_id=h["dataset"]).pk
    assert any(e["data"].get("metrics") for e in events if e["site"] == own)  # its own site's, in full


def test_central_set_input_errors_are_400s_naming_the_field(consortium: dict[str, Any]) -> None:
    c = consortium
    central_ds, _ = _lab_dataset(c)
    hospital_ds = c["hospitals"][0]["dataset"]

    def fields(r: Any) -> dict[str, Any]:
        assert r.status_code == 400, r.content
        return dict(r.json()["error"]["fields"])

    plain = {**SPEC, "evaluation": {"central": False}}
    # A partner's dataset cannot be the central set: it joins as "evaluate", with its owner's approval.
    other = [{"dataset_id": h["dataset"]} for h in c["hospitals"][1:]] + [
        {"dataset_id": hospital_ds, "role": "central"}
    ]
    assert "role 'evaluate'" in str(fields(create_federation(c, spec=CENTRAL_SPEC, sites=other))["sites"])
    assert "spec.evaluation.central" in fields(create_federation(c, spec=plain, sites=_sites(c, central_ds)))
    assert "exactly one" in str(fields(create_federation(c, spec=CENTRAL_SPEC))["sites"])
    second_ds, _ = _lab_dataset(c, "second held-out set")
    two = [*_sites(c, central_ds), {"dataset_id": second_ds, "role": "central"}]
    assert "exactly one" in str(fields(create_federation(c, spec=CENTRAL_SPEC, sites=two))["sites"])
    with tenant_scope(c["lab"].pk):
        assert not Federation.objects.exists()  # nothing was created


def test_a_central_set_that_leaves_mid_run_hands_best_back_to_the_sites(consortium: dict[str, Any]) -> None:
    """Revoked after round 1: later models are not scored on it, so "best" and the registry's
    figures are the training sites' (said in the result), never a pick among the early models."""
    from apps.federation.services.governance import site_revoke

    c, lab = consortium, consortium["lab"]
    central_ds, _ = _lab_dataset(c)
    fed_id = create_federation(c, spec=CENTRAL_SPEC, sites=_sites(c, central_ds)).json()["id"]
    approve_all(c, fed_id)
    _approve_own(c, fed_id)
    assert c["lab_client"].post(f"/api/v1/tenants/{lab.slug}/federations/{fed_id}/start/").status_code == 200
    outcomes = []
    for _ in range(2):  # round 0 and round 1 (scored on the central set)
        with tenant_scope(lab.pk):
            slots = list(SiteRound.objects.filter(round__federation_id=fed_id, state=SiteRound.State.SELECTED))
        assert all(rounds.run_site_round(lab.pk, s.pk) == "submitted" for s in slots)
        outcomes.append(rounds.advance(lab.pk, fed_id))
    with tenant_scope(lab.pk):
        central = FederationSite.all_tenants.get(federation_id=fed_id, role="central")
        site_revoke(tenant=lab, site=central, revoked_by=c["lab_user"])
    outcomes += _run_to_the_end(lab.pk, fed_id, ran=("submitted", "excluded"))  # round 2's central slot
    assert outcomes == ["closed"] * 4 + ["completed"]
    with tenant_scope(lab.pk):
        fed = Federation.objects.get(pk=fed_id)
        train_rounds = list(Round.objects.filter(federation_id=fed_id, kind="train").order_by("number"))
        final_round = Round.objects.get(federation_id=fed_id, kind="evaluate")
        model = ModelVersion.objects.get(pk=fed.model_version_id)
    assert train_rounds[0].central_metrics and not any(r.central_metrics for r in train_rounds[1:])
    assert fed.result["central"]["complete"] is False and fed.result["registered_metrics_on"] == "sites"
    scored = [(r.metrics["loss"], r.number - 1) for r in train_rounds[1:]]
    scored.append((final_round.metrics["loss"], final_round.number - 1))
    best = min(scored, key=lambda p: (p[0], -p[1]))
    assert fed.result["registered_round"] == best[1] and model.lineage["metrics_on"] == "sites"
    assert math.isclose(model.metrics["loss"], best[0])
