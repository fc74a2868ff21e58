"""The demo datasets: three hospitals with a non-IID breast-cancer split, and synthetic clinical
notes whose de-identified version shows masking; a second run changes nothing."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command

from apps.datasets.models import Dataset, DatasetGrant, DatasetVersion
from apps.tenancy.scope import platform_scope

pytestmark = pytest.mark.django_db


def test_seed_demo_datasets_is_non_iid_masked_and_idempotent() -> None:
    call_command("seed_demo", stdout=io.StringIO())
    call_command("seed_demo_datasets", stdout=io.StringIO())
    with platform_scope():
        bc = {d.tenant.slug: d for d in Dataset.all_tenants.filter(name__startswith="Breast cancer")}
        assert set(bc) == {"st-marys", "riverside", "lakeside"}
        shares = {}
        for slug, ds in bc.items():
            deid = DatasetVersion.all_tenants.get(dataset=ds, kind="deidentified")
            balance = deid.validation["class_balance"]
            shares[slug] = balance.get("0", 0) / max(1, sum(balance.values()))
        assert sum(DatasetVersion.all_tenants.get(dataset=d, kind="raw").rows for d in bc.values()) == 569
        assert max(shares.values()) - min(shares.values()) > 0.3, shares  # non-IID: class mix differs
        grants = DatasetGrant.all_tenants.filter(grantee__slug="st-marys", permission="process")
        assert grants.count() == 2
        notes = Dataset.all_tenants.get(name__startswith="Discharge notes")
        deid = DatasetVersion.all_tenants.get(dataset=notes, kind="deidentified")
        actions = {c: p["action"] for c, p in deid.policy["columns"].items()}
        assert actions["email"] != "keep" and actions["note"] == "redact" and actions["nhs_number"] != "keep"
        assert deid.rows >= 300, deid.rows  # k-anonymity keeps the demo's rows (not all suppressed)
        from apps.training.models import TrainingJob

        jobs = list(TrainingJob.all_tenants.values_list("tenant__slug", "status", "admitted_at"))
        assert len(jobs) == 1 and jobs[0][0] == "st-marys" and jobs[0][1] == "queued" and jobs[0][2]  # admitted
        from apps.federation.models import Federation, FederationSite

        # The web app's demo: a draft federation over the three hospitals, approved by every owner.
        (fed,) = Federation.all_tenants.filter(tenant__slug="st-marys")
        assert fed.status == "draft"
        sites = list(FederationSite.all_tenants.filter(federation=fed).values_list("tenant__slug", "approval"))
        assert sorted(sites) == [("lakeside", "approved"), ("riverside", "approved"), ("st-marys", "approved")]
        counts = (
            Dataset.all_tenants.count(),
            DatasetVersion.all_tenants.count(),
            DatasetGrant.all_tenants.count(),
            TrainingJob.all_tenants.count(),
            Federation.all_tenants.count(),
        )
    call_command("seed_demo", stdout=io.StringIO())
    call_command("seed_demo_datasets", stdout=io.StringIO())
    with platform_scope():
        again = (
            Dataset.all_tenants.count(),
            DatasetVersion.all_tenants.count(),
            DatasetGrant.all_tenants.count(),
            TrainingJob.all_tenants.count(),
            Federation.all_tenants.count(),
        )
    assert again == counts
