"""Clinical notes across three hospitals on real Celery workers (issue 11): a text federation.

Each hospital holds a label-skewed share of the demo's synthetic discharge notes (the
``clinical_notes`` generator of ``seed_demo_datasets``; label: the department), uploaded,
de-identified (identifier columns dropped, the note's names, phones and e-mails redacted) and
granted ``federate`` to a lab. The lab drafts a ``text_bag`` federation, each owner approves the
digest it was shown (which says that round 0 sends word counts), the lab starts it, and two worker
processes run round 0 (statistics: every site's word document frequencies, merged into one
vocabulary under the categories' rule), the training rounds and the final evaluation.

Checked: the federation completes; the vocabulary is exactly the words at least 2 hospitals report
in at least 5 notes in all (none of a single note); the global model beats the majority class of
the pooled training notes on every hospital's validation notes by a clear margin; simulation mode
over the pinned versions reaches the same model (``torch.equal``), encoders and local-only
baselines; the registered model is a text model that predicts raw notes over the API. Writes
``reports/FL-notes.json``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from apps.federation.models import Federation, FederationSite, Round, SiteRound
from apps.federation.services import rounds as round_services
from apps.tenancy.scope import tenant_scope
from tests.apps.federation.conftest import approve_all, create_federation
from tests.apps.federation.test_text_federation import text_consortium
from tests.conftest import write_report
from tests.e2e.test_federation_workers import _finished, _kill9, _start_worker, fl_env  # noqa: F401
from tests.fl_data import notes_splits
from workers.federated.stats import MAX_REPORTED_TOKENS

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
ROWS = 360  # about 120 notes per hospital
DROP = {"action": "drop", "params": {}}
NOTES_POLICY = {
    "columns": {
        **{c: DROP for c in ("patient_id", "nhs_number", "name", "email", "phone", "dob", "postcode")},
        "note": {"action": "redact", "params": {"kinds": "all"}},
    },
    "quasi_identifiers": [],
    "k": None,
}
NOTES_SPEC: dict[str, Any] = {
    "train": {
        "model": {"name": "text_bag", "params": {"dim": 32}},
        "optimizer": {"name": "adam", "lr": 0.05},
        "epochs": 2,
        "batch_size": 16,
        "seed": 5,
        "data": {"text_max_len": 48},
    },
    "strategy": {"name": "fedavg"},
    "rounds": 4,
    "min_participants": 2,
    "round_deadline_seconds": 60,
    "evaluation": {"local_baseline": True},
}


@pytest.fixture
def notes_consortium(
    make_tenant: Callable[..., Any], member: Callable[..., Any], api_client_for: Callable[..., Any]
) -> dict[str, Any]:
    """``lab`` coordinates; ``hospitals[i]`` = {tenant, client, dataset, version, grant} (as ``consortium``)."""
    from apps.datasets.management.commands.seed_demo_datasets import clinical_notes

    csvs = notes_splits(clinical_notes(rows=ROWS))
    return text_consortium(make_tenant, member, api_client_for, csvs, NOTES_POLICY)


def test_three_hospitals_federate_clinical_notes_on_workers(
    notes_consortium: dict[str, Any],
    fl_env: dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    from apps.datasets.models import DatasetVersion
    from apps.federation.services.governance import ROUND_0_TEXT

    c = notes_consortium
    lab = c["lab"]
    for h in c["hospitals"]:
        with tenant_scope(h["tenant"].pk):
            schema = DatasetVersion.objects.get(pk=h["version"]["id"]).schema
        assert schema["task"] == "text_classification", schema
        assert {col["name"]: col["type"] for col in schema["columns"]}["note"] == "text"
    r = create_federation(c, spec=NOTES_SPEC)
    assert r.status_code == 201, r.content
    fed = r.json()
    decided = approve_all(c, fed["id"], share_metrics=True)
    assert len(decided) == 3
    slug = c["hospitals"][0]["tenant"].slug
    inbox = c["hospitals"][0]["client"].get(f"/api/v1/tenants/{slug}/federation-sites/").json()["results"]
    shown = next(s for s in inbox if s["federation"] == fed["id"])["shown"]
    assert shown["leaves_the_site"]["round_0"] == ROUND_0_TEXT  # the owners approved word counts leaving
    assert f"at most {MAX_REPORTED_TOKENS:,}" in ROUND_0_TEXT

    log = tmp_path / "workers.log"
    started = time.monotonic()
    procs = [_start_worker(fl_env, log, "notes-a"), _start_worker(fl_env, log, "notes-b")]
    try:
        r = c["lab_client"].post(f"/api/v1/tenants/{lab.slug}/federations/{fed['id']}/start/")
        assert r.status_code == 200, r.content
        done = _finished(lab.pk, fed["id"], log, 300, round_services.sweep)
    finally:
        for p in procs:
            _kill9(p)
    whole = time.monotonic() - started
    assert done.status == "completed", (done.status_reason, log.read_text()[-4000:])
    rounds_run = NOTES_SPEC["rounds"]
    with tenant_scope(lab.pk):
        rounds = list(Round.objects.filter(federation_id=fed["id"]).order_by("number"))
        stats = [s.statistics for s in SiteRound.objects.filter(round=rounds[0], state="submitted").order_by("site_id")]
        trained = {r.number: len(r.participants) for r in rounds if r.kind == "train"}
    assert [r.kind for r in rounds] == ["statistics", *["train"] * rounds_run, "evaluate"]
    assert trained == {n: 3 for n in range(1, rounds_run + 1)}

    # Round 0: what the sites reported and what the server kept.
    enc = done.encoders
    assert enc["kind"] == "text" and enc["columns"] == ["note"] and enc["vocab"][:2] == ["<pad>", "<oov>"]
    held: dict[str, list[int]] = {}
    for s in stats:
        assert s["columns"] == [] and s["text"]["tokenizer"] == "words"
        for w, n in s["text"]["tokens"]:
            held.setdefault(w, []).append(n)
    vocab = enc["vocab"][2:]
    assert set(vocab) == {w for w, ns in held.items() if len(ns) >= 2 and sum(ns) >= 5}

    # The sites' pinned notes: the majority-class baseline, and the words of a single note.
    fspec_train = _train_spec(done)
    from workers.training.data import site_split, tokenize

    train_labels: Counter[str] = Counter()
    val_labels: list[str] = []
    df: Counter[str] = Counter()
    sizes = []
    with tenant_scope(lab.pk):
        sites = list(FederationSite.all_tenants.filter(federation_id=fed["id"]).select_related("version"))
        for site in sorted(sites, key=lambda s: s.pk):
            table, _schema = round_services._load_table(done, site)
            labels = table.column("department").to_pylist()
            idx, val_idx = site_split(labels, "classification", fspec_train)
            train_labels.update(labels[int(i)] for i in idx)
            val_labels += [labels[int(i)] for i in val_idx]
            df.update(w for note in table.column("note").to_pylist() for w in set(tokenize(note or "")))
            sizes.append(table.num_rows)
    single = {w for w, n in df.items() if n == 1}
    assert single and not single & set(vocab)
    majority = train_labels.most_common(1)[0][0]
    baseline = sum(1 for v in val_labels if v == majority) / len(val_labels)
    result = done.result
    acc = result["final_metrics"]["accuracy"]

    parity = _simulation_parity(lab.pk, done, rounds[rounds_run])
    predicted = _predict_over_api(c, done)
    depts = sorted(train_labels)
    correct = sum(1 for d, p in zip(depts, predicted, strict=True) if d == p)
    figures = {
        "sites": len(sites),
        "rows_per_site": sizes,
        "rounds": rounds_run,
        "model": NOTES_SPEC["train"]["model"]["name"],
        "words_reported": len(held),
        "words_reported_by_one_site": sum(1 for ns in held.values() if len(ns) == 1),
        "vocabulary_size": len(enc["vocab"]),
        "single_note_words_in_vocabulary": len(single & set(vocab)),
        "global_accuracy": acc,
        "majority_class": majority,
        "majority_baseline_accuracy": baseline,
        "margin_over_baseline": acc - baseline,
        "per_site_accuracy": {k: v.get("accuracy") for k, v in result["per_site"].items()},
        "local_only_accuracy": {k: v.get("accuracy") for k, v in result["local_only"].items()},
        "simulation_parity": parity,
        "predict_api_correct": f"{correct}/{len(depts)}",
        "whole_run_seconds": round(whole, 1),
    }
    ok = acc - baseline >= 0.3 and all(parity.values()) and correct == len(depts)
    write_report("FL-notes", figures, ok)
    assert acc - baseline >= 0.3, figures
    assert all(parity.values()), figures
    assert correct == len(depts), (predicted, figures)


def _train_spec(fed: Federation) -> Any:
    from workers.federated.spec import FederationSpec

    return FederationSpec.from_dict(fed.spec).train


def _simulation_parity(lab_id: int, fed: Federation, final_round: Round) -> dict[str, bool]:
    """Simulation mode over the hospitals' pinned versions with the federation's secret, id and site
    ids: the same model, encoders and local-only baselines as the hosted run."""
    import torch

    from workers.federated.simulate import VirtualSite, run
    from workers.federated.spec import FederationSpec

    with tenant_scope(lab_id):
        hosted = round_services.load_round_model(fed, final_round)
        sites, schema = [], None
        for s in FederationSite.all_tenants.filter(federation=fed).select_related("version").order_by("id"):
            table, schema = round_services._load_table(fed, s)
            sites.append(VirtualSite(s.pk, s.label, table, role=s.role, n_rows=int(s.version.rows or 0)))
    assert schema is not None
    sim = run(FederationSpec.from_dict(fed.spec), sites, schema, secret=bytes.fromhex(fed.seed_secret),
              federation_id=fed.pk)  # fmt: skip
    local_only = {k: {m: v for m, v in d.items() if v == v} for k, d in sim.local_only.items()}
    return {
        "model": sim.state.keys() == hosted.keys() and all(torch.equal(sim.state[k], hosted[k]) for k in hosted),
        "encoders": sim.encoders == fed.encoders,
        "local_only": fed.result.get("local_only") == local_only,
    }


def _predict_over_api(c: dict[str, Any], fed: Federation) -> list[str]:
    """The registered model is a text model: one raw note per department, predicted over the API."""
    from apps.training.models import ModelVersion

    lab = c["lab"]
    with tenant_scope(lab.pk):
        model = ModelVersion.objects.get(pk=fed.model_version_id)
    assert model.source == "federation" and model.input_info["kind"] == "text", model.input_info
    assert model.encoders["vocab"] == fed.encoders["vocab"]
    depts = sorted(fed.encoders["label"]["classes"])
    notes = [f"The patient was seen in {d} by Dr Jones. Discharged home. Follow-up in 6 weeks." for d in depts]
    r = c["lab_client"].post(f"/api/v1/tenants/{lab.slug}/models/{model.pk}/predict/", {"rows": notes}, format="json")
    assert r.status_code == 200, r.content
    return [p["label"] for p in r.json()["predictions"]]
