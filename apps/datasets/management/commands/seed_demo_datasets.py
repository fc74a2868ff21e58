"""Seed the demo datasets (idempotent), after ``seed_demo``:

* scikit-learn's breast-cancer data split unevenly (non-IID) across three demo hospitals —
  St Mary's, Riverside General and Lakeside Children's — each uploaded, validated, de-identified
  (keep-all policy: the data has no direct identifiers) and granted ``process`` to St Mary's, which
  coordinates the federation;
* a generated clinical-notes dataset at St Mary's with fake names, phones, e-mails and NHS numbers,
  de-identified with the scanner's proposed policy so masking, pseudonymisation and redaction are
  visible in the preview.

Everything goes through the audited services, exactly as an API upload would.
"""

from __future__ import annotations

import csv
import io
import random
from typing import Any

from django.core.management.base import BaseCommand
from django.db import transaction

from apps.accounts.models import User
from apps.common.context import Actor, context
from apps.datasets import services
from apps.datasets.models import Dataset, DatasetGrant, DatasetVersion
from apps.datasets.storage import EncryptedUpload
from apps.tenancy.models import Membership, Role, Tenant
from apps.tenancy.scope import tenant_scope
from apps.tenancy.services import tenant_create

SEED_ACTOR = Actor.system("seed_demo_datasets")
DEMO_FEDERATION = "demo: breast cancer across three hospitals"
DEMO_FEDERATION_SPEC: dict[str, Any] = {
    "train": {
        "model": {"name": "mlp", "params": {"hidden": [32]}},
        "optimizer": {"name": "adamw", "lr": 0.01},
        "epochs": 2,
        "batch_size": 32,
        "seed": 7,
    },
    "strategy": {"name": "fedavg"},
    "rounds": 5,
    "min_participants": 2,
    "round_deadline_seconds": 120,
}
HOSPITALS = [
    ("st-marys", "St Mary's Hospital"),
    ("riverside", "Riverside General Hospital"),
    ("lakeside", "Lakeside Children's Clinic"),
]
# Share of each class (malignant = 0, benign = 1) per hospital: deliberately skewed (non-IID).
SPLIT = {"st-marys": (0.20, 0.55), "riverside": (0.65, 0.25), "lakeside": (0.15, 0.20)}
BREAST_CANCER = "Breast cancer (Wisconsin) cohort"
NOTES = "Discharge notes (synthetic)"
FIRST = ["Olivia", "Amelia", "Isla", "Ava", "Noah", "Oliver", "George", "Arthur", "Priya", "Mohammed", "Wei", "Sofia"]
LAST = ["Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Patel", "Khan", "Chen", "Evans", "Walker", "Wright"]
DEPARTMENTS = ["cardiology", "oncology", "respiratory", "orthopaedics"]


def _nhs_number(rng: random.Random) -> str:
    while True:
        digits = [rng.randint(0, 9) for _ in range(9)]
        check = 11 - sum(d * w for d, w in zip(digits, range(10, 1, -1), strict=True)) % 11
        check = 0 if check == 11 else check
        if check != 10:
            s = "".join(map(str, digits)) + str(check)
            return f"{s[:3]} {s[3:6]} {s[6:]}"


def breast_cancer_parts() -> dict[str, bytes]:
    """The sklearn breast-cancer table split per hospital by class shares (deterministic)."""
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    rng = random.Random(7)
    parts: dict[str, list[int]] = {slug: [] for slug, _ in HOSPITALS}
    for label in (0, 1):
        idx = [int(i) for i in frame.index[frame["target"] == label]]
        rng.shuffle(idx)
        start = 0
        for slug, _ in HOSPITALS:
            share = SPLIT[slug][label]
            n = round(share * len(idx))
            parts[slug] += idx[start : start + n]
            start += n
        parts[HOSPITALS[0][0]] += idx[start:]
    out = {}
    for slug, rows in parts.items():
        buf = io.StringIO()
        frame.loc[sorted(rows)].to_csv(buf, index=False)
        out[slug] = buf.getvalue().encode()
    return out


def clinical_notes(rows: int = 400) -> bytes:
    rng = random.Random(11)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["patient_id", "nhs_number", "name", "email", "phone", "dob", "postcode", "sex", "note", "department"])
    for i in range(rows):
        fn, ln = rng.choice(FIRST), rng.choice(LAST)
        dept = rng.choice(DEPARTMENTS)
        phone = f"07{rng.randint(100, 999)} {rng.randint(100000, 999999)}"
        w.writerow(
            [
                f"SM-{100000 + i}",
                _nhs_number(rng),
                f"{fn} {ln}",
                f"{fn.lower()}.{ln.lower()}@mail.example",
                phone,
                f"{rng.randint(1940, 2010)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                f"{rng.choice(['SW1A', 'N1', 'E14', 'M1', 'LS6'])} {rng.randint(1, 9)}{rng.choice('ABDEFGHJ')}"
                f"{rng.choice('LNPQRSTU')}",
                rng.choice("FM"),
                f"{fn} {ln} was seen in {dept} by Dr {rng.choice(LAST)}. Discharged home; the family can be reached "
                f"on {phone}. Follow-up in {rng.randint(2, 12)} weeks.",
                dept,
            ]
        )
    return buf.getvalue().encode()


def _owner(tenant: Tenant) -> User:
    email = f"owner@{tenant.slug}.example"
    user = User.objects.filter(email=email).first()
    if user is None:
        from apps.accounts.services import user_create

        user = user_create(
            email=email, password="cohort-demo-owner", full_name=f"{tenant.name} owner", actor=SEED_ACTOR
        )
    from apps.audit.services import audit_record, audited_change

    with tenant_scope(tenant.pk):
        if not Membership.objects.filter(user=user).exists():
            with audited_change():
                m = Membership.objects.create(tenant=tenant, user=user, role=Role.OWNER)
                audit_record(
                    action="member.added",
                    tenant=tenant,
                    actor=SEED_ACTOR,
                    target=m,
                    details={"user_id": user.pk, "role": Role.OWNER},
                )
    return user


def _upload(tenant: Tenant, user: User, name: str, data: bytes, filename: str, options: dict[str, Any]) -> Any:
    """Create the dataset and its raw version as an API upload would (idempotent by name)."""
    with tenant_scope(tenant.pk):
        ds = Dataset.objects.filter(name=name, status=Dataset.Status.ACTIVE).first()
        if ds is not None:
            return ds, DatasetVersion.objects.filter(dataset=ds, kind="raw", status="ready").order_by("number").first()
        ds = services.dataset_create(tenant=tenant, created_by=user, name=name, description="Demo data")
        sink = EncryptedUpload(tenant.pk, services.PART_KIND, f"seed-{ds.pk}", size_hint=len(data))
        sink.write(data)
        staged = sink.finish()
        raw = services.upload_single(
            tenant=tenant,
            dataset=ds,
            created_by=user,
            filename=filename,
            staged=staged,
            options=services.clean_options(options),
            inline=True,
        )
        return ds, raw


def _deidentify(tenant: Tenant, user: User, raw: DatasetVersion, policy: dict[str, Any]) -> DatasetVersion:
    with tenant_scope(tenant.pk):
        existing = DatasetVersion.objects.filter(source_version=raw, kind="deidentified", status="ready").first()
        return existing or services.deidentify(tenant=tenant, raw=raw, policy=policy, created_by=user)


class Command(BaseCommand):
    help = "Seed demo datasets: breast cancer across three hospitals (non-IID) and synthetic clinical notes."

    def handle(self, *args: Any, **options: Any) -> None:
        with context(actor=SEED_ACTOR):
            self._seed()

    def _seed(self) -> None:
        tenants = {}
        for slug, name in HOSPITALS:
            tenants[slug] = Tenant.objects.filter(slug=slug).first() or tenant_create(
                slug=slug, name=name, actor=SEED_ACTOR
            )
        owners = {slug: _owner(t) for slug, t in tenants.items()}
        coordinator = tenants["st-marys"]
        own_version = None
        studies: dict[str, int] = {}
        for slug, data in breast_cancer_parts().items():
            t, user = tenants[slug], owners[slug]
            ds, raw = _upload(t, user, BREAST_CANCER, data, f"breast_cancer_{slug}.csv", {"label": "target"})
            studies[slug] = ds.pk
            keep_all: dict[str, Any] = {"columns": {}, "quasi_identifiers": [], "k": None}
            deid = _deidentify(t, user, raw, keep_all)
            if t.pk == coordinator.pk:
                own_version = deid
            if t.pk != coordinator.pk:
                with tenant_scope(t.pk):
                    if not DatasetGrant.objects.filter(
                        dataset=ds, grantee=coordinator, revoked_at__isnull=True
                    ).exists():
                        services.grant_create(
                            tenant=t,
                            dataset=ds,
                            grantee=coordinator,
                            permission="process",
                            created_by=user,
                            note="Federated breast-cancer study",
                        )
            self.stdout.write(f"  {slug:<10} {BREAST_CANCER}: {raw.rows} rows, de-identified v{deid.number}")
        t, user = coordinator, owners["st-marys"]
        ds, raw = _upload(t, user, NOTES, clinical_notes(), "discharge_notes.csv", {"label": "department"})
        policy = raw.pii_report.get("proposed_policy") or {"columns": {}, "quasi_identifiers": [], "k": None}
        if "dob" in policy.get("columns", {}):
            # Year of birth × postcode district × sex splits 400 rows into ~700 cells, so k = 5 would
            # suppress nearly every row; the demo drops the date of birth instead (k holds on the rest).
            policy = {
                **policy,
                "columns": {**policy["columns"], "dob": {"action": "drop", "params": {}}},
                "quasi_identifiers": [q for q in policy.get("quasi_identifiers", []) if q != "dob"],
            }
        deid = _deidentify(t, user, raw, policy)
        actions = {c: p["action"] for c, p in policy.get("columns", {}).items() if p["action"] != "keep"}
        self.stdout.write(
            f"  st-marys   {NOTES}: {raw.rows} rows; proposed policy applied: {actions}; "
            f"de-identified v{deid.number} ({deid.rows} rows after k-anonymity)"
        )
        if own_version is not None:
            self._demo_job(coordinator, owners["st-marys"], own_version.pk)
        self._demo_federation(coordinator, tenants, owners, studies)
        self.stdout.write(self.style.SUCCESS("Demo datasets seeded (idempotent)."))

    def _demo_federation(
        self, coordinator: Tenant, tenants: dict[str, Tenant], owners: dict[str, Any], studies: dict[str, int]
    ) -> None:
        """A draft federation over the three hospitals' data, approved by every owner (sharing their
        figures with the coordinator), for the web app's demo: an analyst starts it and watches it."""
        from apps.federation.models import Federation

        with tenant_scope(coordinator.pk):
            if Federation.objects.filter(name=DEMO_FEDERATION).exists():
                return
        # One transaction: a draft exists only with every owner's approval (a failed approval
        # leaves nothing half-made for the next run's "already there" check to skip).
        with transaction.atomic():
            self._draft_and_approve(coordinator, tenants, owners, studies)

    def _draft_and_approve(
        self, coordinator: Tenant, tenants: dict[str, Tenant], owners: dict[str, Any], studies: dict[str, int]
    ) -> None:
        from apps.common.exceptions import DomainError
        from apps.federation.models import FederationSite
        from apps.federation.services import federation_create, site_decide, site_digest

        with tenant_scope(coordinator.pk):
            try:
                sites = [{"dataset_id": d} for d in studies.values()]
                fed = federation_create(tenant=coordinator, created_by=owners["st-marys"], name=DEMO_FEDERATION,
                                        spec=DEMO_FEDERATION_SPEC, sites=sites)  # fmt: skip
            except DomainError as exc:  # a version still processing on the worker: no demo federation yet
                self.stdout.write(f"  st-marys   demo federation skipped: {exc}")
                return
        for slug in studies:
            tenant = tenants[slug]
            with tenant_scope(tenant.pk):
                site = FederationSite.objects.select_related("federation").get(federation_id=fed.pk, tenant=tenant)
                digest = str(site_digest(site, site.federation)["digest"])
                site_decide(tenant=tenant, site=site, approve=True, digest=digest, decided_by=owners[slug],
                            share_metrics=True, note="demo")  # fmt: skip
        self.stdout.write(f"  st-marys   demo federation {fed.pk}: drafted, approved by every owner")

    def _demo_job(self, tenant: Tenant, user: Any, version_id: int) -> None:
        """One training job on St Mary's own data, so the demo has a model; the worker trains it."""
        from apps.training import services as training
        from apps.training.models import TrainingJob

        name = "demo: breast cancer MLP"
        with tenant_scope(tenant.pk):
            if TrainingJob.objects.filter(name=name).exists():
                return
            if training.usable_version(tenant=tenant, version_id=version_id) is None:
                # Large uploads are processed by the worker: the version is not ready yet.
                self.stdout.write("  st-marys   demo training job skipped: the data is still being processed")
                return
            job = training.job_create(
                tenant=tenant,
                created_by=user,
                name=name,
                dataset_version_id=version_id,
                spec={"model": {"name": "mlp", "params": {"hidden": [32]}}, "epochs": 30, "checkpoint_every_steps": 50},
            )
        self.stdout.write(f"  st-marys   training job {job.pk} queued ({job.wait_reason or 'admitted'})")
