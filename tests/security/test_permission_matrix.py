"""The permission matrix, cell by cell: every (role, action) of ``apps.tenancy.policy.MATRIX`` and
every API-key scope set is exercised through a real request; allowed ⇔ the expected 2xx, refused ⇔
403 with the error envelope (never a 500, never a silent success).

The request table below must name every action in the matrix: adding an action without a request
here fails ``test_request_table_covers_the_matrix``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.urls import resolve

from apps.accounts.services import api_key_create
from apps.audit.models import AuditEvent
from apps.tenancy import policy
from apps.tenancy.models import Invitation, Membership, Role
from apps.tenancy.scope import tenant_scope
from apps.tenancy.services import invitation_create
from tests.apps.datasets.helpers import SIMPLE_POLICY, create_dataset, deidentify, named, table_csv, upload_version
from tests.security.helpers import assert_error_shape

pytestmark = pytest.mark.django_db

# A small valid table for uploads (single and resumable); the resumable one completes with its hash.
UPLOAD_CSV = table_csv(8, seed=3)
UPLOAD_SHA256 = hashlib.sha256(UPLOAD_CSV).hexdigest()
# A tiny training spec (the de-identified matrix dataset is labelled "outcome").
TRAIN_SPEC: dict[str, Any] = {"model": {"name": "logistic_regression", "params": {}}, "epochs": 1, "batch_size": 8}
FED_SPEC: dict[str, Any] = {"train": TRAIN_SPEC, "rounds": 1, "min_participants": 2}


@dataclass(frozen=True)
class DatasetIds:
    id: int
    raw: int | None = None  # a ready raw version
    deid: int | None = None  # a ready de-identified version derived from ``raw``


@dataclass
class Ctx:
    """What a request builder may use: the tenant, the acting principal, factories for targets.

    Targets are made by an owner of the tenant (never by the principal under test), through the
    API. ``cache`` and ``seq`` are shared by every principal of one test, so read-only targets
    (``dataset()``, ``shared_dataset()``) are made once per test; the ``new_*`` ones are fresh.
    """

    tenant: Any
    actor: Any  # a User, or None for an API key
    make_user: Callable[..., Any]
    make_tenant: Callable[..., Any]
    api_client_for: Callable[[Any], Any]
    seq: list[int] = field(default_factory=lambda: [0])
    cache: dict[str, Any] = field(default_factory=dict)

    def unique(self, prefix: str) -> str:
        self.seq[0] += 1
        return f"{prefix}{self.seq[0]}"

    def base(self) -> str:
        return f"/api/v1/tenants/{self.tenant.slug}/"

    def new_member(self, role: str = Role.ANALYST, tenant: Any = None) -> Membership:
        tenant = tenant or self.tenant
        user = self.make_user()
        from apps.audit.services import audit_record, audited_change

        with tenant_scope(tenant.pk), audited_change():
            m = Membership.objects.create(tenant=tenant, user=user, role=role)
            audit_record(action="member.added", tenant=tenant, target=m, details={"fixture": True})
        return m

    def new_invitation(self) -> Invitation:
        with tenant_scope(self.tenant.pk):
            inv, _ = invitation_create(
                tenant=self.tenant,
                actor_role=Role.OWNER,
                invited_by=None,
                email=f"{self.unique('inv')}@example.org",
                role=Role.ANALYST,
            )
        return inv

    def new_key(self) -> int:
        creator = self.actor if self.actor is not None else self.make_user()
        with tenant_scope(self.tenant.pk):
            return api_key_create(
                tenant=self.tenant, created_by=creator, name=self.unique("k"), scopes=["read"], expires_at=None
            ).key.pk

    def an_event(self) -> int:
        with tenant_scope(self.tenant.pk):
            return AuditEvent.objects.filter(tenant=self.tenant).order_by("-id").values_list("id", flat=True)[0]

    # --- dataset targets (made by an owner through the API) ------------------------------------------

    def owner_client(self, tenant: Any = None) -> Any:
        """A session client of a (fixture) owner of ``tenant`` (default: this tenant)."""
        tenant = tenant or self.tenant
        key = f"owner:{tenant.pk}"
        if key not in self.cache:
            self.cache[key] = self.api_client_for(self.new_member(Role.OWNER, tenant=tenant).user)
        return self.cache[key]

    def other_tenant(self) -> Any:
        """Another active tenant (the grantee of ``new_grant`` and ``grant.create``)."""
        if "other" not in self.cache:
            self.cache["other"] = self.make_tenant()
        return self.cache["other"]

    def new_dataset(self, *, versions: bool = True, tenant: Any = None) -> DatasetIds:
        """A fresh dataset of ``tenant``; with ``versions``, a ready raw version and a ready
        de-identified version of it."""
        tenant = tenant or self.tenant
        client = self.owner_client(tenant)
        ds_id = create_dataset(client, tenant.slug, self.unique("Matrix dataset "))
        if not versions:
            return DatasetIds(ds_id)
        # Labelled ("outcome"), so that the de-identified version is trainable (job.*, model.*).
        raw = upload_version(client, tenant.slug, ds_id, table_csv(12, seed=tenant.pk % 7), label="outcome")
        deid = deidentify(client, tenant.slug, ds_id, raw["id"])
        assert raw["status"] == deid["status"] == "ready", (raw["status"], deid["status"])
        return DatasetIds(ds_id, raw["id"], deid["id"])

    def dataset(self) -> DatasetIds:
        """This tenant's read-only dataset (raw + de-identified version), made once per test."""
        if "dataset" not in self.cache:
            self.cache["dataset"] = self.new_dataset()
        return self.cache["dataset"]

    def new_grant(self) -> tuple[int, int]:
        """(dataset id, grant id): a live ``process`` grant of a fresh dataset to another tenant."""
        ds = self.new_dataset(versions=False)
        r = self.owner_client().post(
            f"{self.base()}datasets/{ds.id}/grants/",
            {"grantee": self.other_tenant().slug, "permission": "process"},
            format="json",
        )
        assert r.status_code == 201, r.content
        return ds.id, int(r.json()["id"])

    def new_reservation(self) -> tuple[int, int]:
        """(dataset id, reservation id): an open reservation this tenant made on its own dataset."""
        ds = self.new_dataset(versions=False)
        r = self.owner_client().post(
            f"{self.base()}datasets/{ds.id}/budget/reservations/",
            {"epsilon": "0.1", "delta": "0", "purpose": "matrix fixture"},
            format="json",
        )
        assert r.status_code == 201, r.content
        return ds.id, int(r.json()["id"])

    def new_upload(self, *, chunks: bool = False) -> int:
        """An open resumable upload session for ``UPLOAD_CSV`` (with ``chunks``: all bytes sent)."""
        ds = self.new_dataset(versions=False)
        client = self.owner_client()
        r = client.post(
            f"{self.base()}uploads/",
            {"dataset_id": ds.id, "filename": "part.csv", "size": len(UPLOAD_CSV)},
            format="json",
        )
        assert r.status_code == 201, r.content
        upload_id = int(r.json()["id"])
        if chunks:
            r = client.put(
                f"{self.base()}uploads/{upload_id}/?offset=0", UPLOAD_CSV, content_type="application/octet-stream"
            )
            assert r.status_code == 200, r.content
        return upload_id

    # --- training targets (made through the services, as the worker would) --------------------------

    def new_job(self) -> int:
        """A fresh queued training job on the read-only dataset's de-identified version."""
        from apps.training import services as training

        with tenant_scope(self.tenant.pk):
            job = training.job_create(
                tenant=self.tenant,
                created_by=None,
                name=self.unique("Matrix job "),
                dataset_version_id=self.dataset().deid,
                spec=TRAIN_SPEC,
            )
        return int(job.pk)

    def finished_job(self) -> tuple[int, int]:
        """(job id, model version id): a job run to success by the task body (made once per test),
        with its event stream and registered model version."""
        if "finished_job" not in self.cache:
            from apps.training import services as training
            from apps.training.models import ModelVersion

            job_id = self.new_job()
            assert training.run_job(self.tenant.pk, job_id) == "succeeded"
            with tenant_scope(self.tenant.pk):
                model_id = ModelVersion.objects.get(job_id=job_id).pk
            self.cache["finished_job"] = (job_id, int(model_id))
        return self.cache["finished_job"]

    def shared_dataset(self) -> int:
        """A dataset of ANOTHER tenant, with a de-identified version, granted to this tenant with
        ``download`` (made once per test)."""
        if "shared" not in self.cache:
            owner = self.make_tenant()
            ds = self.new_dataset(tenant=owner)
            r = self.owner_client(owner).post(
                f"/api/v1/tenants/{owner.slug}/datasets/{ds.id}/grants/",
                {"grantee": self.tenant.slug, "permission": "download"},
                format="json",
            )
            assert r.status_code == 201, r.content
            self.cache["shared"] = ds.id
        return int(self.cache["shared"])

    # --- federation targets (this tenant coordinates, over two of its own datasets) ----------------

    def new_federation(self, *, approved: bool = False) -> int:
        """A fresh draft federation over the read-only dataset and a new one (with ``approved``,
        both sites approved by this tenant's owner, so it may start)."""
        client = self.owner_client()
        body = {
            "name": self.unique("Matrix federation "),
            "spec": FED_SPEC,
            "sites": [{"dataset_id": self.dataset().id}, {"dataset_id": self.new_dataset().id}],
        }
        r = client.post(f"{self.base()}federations/", body, format="json")
        assert r.status_code == 201, r.content
        fed_id = int(r.json()["id"])
        if approved:
            for site in self.inbox(fed_id):
                r = client.post(
                    f"{self.base()}federation-sites/{site['id']}/approve/", {"digest": site["digest"]}, format="json"
                )
                assert r.status_code == 200, r.content
        return fed_id

    def federation(self) -> int:
        if "federation" not in self.cache:
            self.cache["federation"] = self.new_federation()
        return int(self.cache["federation"])

    def inbox(self, fed_id: int) -> list[dict[str, Any]]:
        r = self.owner_client().get(f"{self.base()}federation-sites/")
        assert r.status_code == 200, r.content
        return [s for s in r.json()["results"] if s["federation"] == fed_id]

    def new_site(self) -> int:
        """A pending site of a fresh draft; its digest is kept for the approval body."""
        site = self.inbox(self.new_federation())[0]
        self.cache["site_digest"] = site["digest"]
        return int(site["id"])


@dataclass(frozen=True)
class Req:
    method: str
    path: Callable[[Ctx], str]  # absolute; see _t, _ds
    body: Callable[[Ctx], Any] | None = None
    ok: int = 200
    fmt: str = "json"  # how the body is sent: "json", "multipart", or "octet" (raw application/octet-stream)


def _t(suffix: str = "") -> Callable[[Ctx], str]:
    return lambda c: f"{c.base()}{suffix}"


def _ds(suffix: str = "", *, fresh: bool = False) -> Callable[[Ctx], str]:
    """A path under this tenant's read-only dataset, or (``fresh``) under a new bare dataset."""
    return lambda c: f"{c.base()}datasets/{(c.new_dataset(versions=False) if fresh else c.dataset()).id}/{suffix}"


def _version(which: str, suffix: str = "") -> Callable[[Ctx], str]:
    """A path under the read-only dataset's ``raw`` or ``deid`` version."""
    return lambda c: f"{c.base()}datasets/{c.dataset().id}/versions/{getattr(c.dataset(), which)}/{suffix}"


def _grant(c: Ctx) -> str:
    ds_id, grant_id = c.new_grant()
    return f"{c.base()}datasets/{ds_id}/grants/{grant_id}/"


def _reservation(suffix: str) -> Callable[[Ctx], str]:
    def path(c: Ctx) -> str:
        ds_id, res_id = c.new_reservation()
        return f"{c.base()}datasets/{ds_id}/budget/reservations/{res_id}/{suffix}"

    return path


def _upload(suffix: str = "", *, chunks: bool = False) -> Callable[[Ctx], str]:
    return lambda c: f"{c.base()}uploads/{c.new_upload(chunks=chunks)}/{suffix}"


def _shared(suffix: str = "") -> Callable[[Ctx], str]:
    """A path under this tenant's shared-datasets route for another tenant's granted dataset."""
    return lambda c: f"{c.base()}shared-datasets/{c.shared_dataset()}/{suffix}"


def _job(suffix: str = "", *, queued: bool = False) -> Callable[[Ctx], str]:
    """A path under a fresh queued job (``queued``) or the test's finished job."""
    return lambda c: f"{c.base()}jobs/{c.new_job() if queued else c.finished_job()[0]}/{suffix}"


def _model(suffix: str = "") -> Callable[[Ctx], str]:
    """A path under the model version of the test's finished job."""
    return lambda c: f"{c.base()}models/{c.finished_job()[1]}/{suffix}"


def _predict_body(c: Ctx) -> dict[str, Any]:
    """Two rows with every feature column of the finished job's model."""
    from apps.tenancy.scope import tenant_scope
    from apps.training.models import ModelVersion

    with tenant_scope(c.tenant.pk):
        names = [col["name"] for col in ModelVersion.objects.get(pk=c.finished_job()[1]).encoders["columns"]]
    return {"rows": [dict.fromkeys(names, 1.0), dict.fromkeys(names, 2.0)]}


def _fed(suffix: str = "", *, fresh: bool = False, approved: bool = False) -> Callable[[Ctx], str]:
    """A path under this tenant's read-only federation, or (``fresh``) under a new draft."""

    def path(c: Ctx) -> str:
        fed_id = c.new_federation(approved=approved) if fresh else c.federation()
        return f"{c.base()}federations/{fed_id}/{suffix}"

    return path


def _site(suffix: str) -> Callable[[Ctx], str]:
    return lambda c: f"{c.base()}federation-sites/{c.new_site()}/{suffix}"


# action -> the requests that exercise it (each must succeed for an allowed principal).
REQUESTS: dict[str, list[Req]] = {
    "tenant.view": [Req("GET", _t())],
    "tenant.update": [Req("PATCH", _t(), lambda c: {"name": c.unique("Renamed ")})],
    "member.list": [
        Req("GET", _t("members/")),
        Req("GET", lambda c: f"/api/v1/tenants/{c.tenant.slug}/members/{c.new_member().pk}/"),
    ],
    "member.add": [Req("POST", _t("members/"), lambda c: {"email": c.make_user().email, "role": "analyst"}, 201)],
    "member.change_role": [
        Req(
            "PATCH",
            lambda c: f"/api/v1/tenants/{c.tenant.slug}/members/{c.new_member().pk}/",
            lambda c: {"role": "auditor"},
        ),
    ],
    "member.remove": [Req("DELETE", lambda c: f"/api/v1/tenants/{c.tenant.slug}/members/{c.new_member().pk}/", ok=204)],
    "invitation.list": [
        Req("GET", _t("invitations/")),
        Req("GET", lambda c: f"/api/v1/tenants/{c.tenant.slug}/invitations/{c.new_invitation().pk}/"),
    ],
    "invitation.create": [
        Req("POST", _t("invitations/"), lambda c: {"email": f"{c.unique('new')}@example.org", "role": "analyst"}, 201),
    ],
    "invitation.revoke": [
        Req("DELETE", lambda c: f"/api/v1/tenants/{c.tenant.slug}/invitations/{c.new_invitation().pk}/"),
    ],
    "apikey.list": [
        Req("GET", _t("api-keys/")),
        Req("GET", lambda c: f"/api/v1/tenants/{c.tenant.slug}/api-keys/{c.new_key()}/"),
    ],
    "apikey.create": [Req("POST", _t("api-keys/"), lambda c: {"name": c.unique("key"), "scopes": ["read"]}, 201)],
    # The actor's own key: integrators may revoke only the keys they created.
    "apikey.revoke": [Req("DELETE", lambda c: f"/api/v1/tenants/{c.tenant.slug}/api-keys/{c.new_key()}/")],
    "audit.list": [
        Req("GET", _t("audit-events/")),
        Req("GET", lambda c: f"/api/v1/tenants/{c.tenant.slug}/audit-events/{c.an_event()}/"),
    ],
    "audit.export": [Req("GET", _t("audit-events/export/?file_format=csv"))],
    "audit.verify": [Req("POST", _t("audit-events/verify/"))],
    "dataset.list": [
        Req("GET", _t("datasets/")),
        Req("GET", _ds()),
        Req("GET", _ds("versions/")),
        Req("GET", _version("raw")),
    ],
    "dataset.create": [
        Req("POST", _t("datasets/"), lambda c: {"name": c.unique("Created "), "description": "matrix"}, 201),
        Req("POST", _ds("versions/", fresh=True), lambda c: {"file": named(UPLOAD_CSV)}, 201, "multipart"),
        Req(
            "POST",
            _t("uploads/"),
            lambda c: {
                "dataset_id": c.new_dataset(versions=False).id,
                "filename": "part.csv",
                "size": len(UPLOAD_CSV),
            },
            201,
        ),
        Req("GET", _upload()),
        Req("PUT", _upload("?offset=0"), lambda c: UPLOAD_CSV, fmt="octet"),
        Req("DELETE", _upload()),
        Req("POST", _upload("complete/", chunks=True), lambda c: {"sha256": UPLOAD_SHA256}, 201),
    ],
    "dataset.update": [Req("PATCH", _ds(fresh=True), lambda c: {"description": c.unique("Described ")})],
    "dataset.delete": [Req("DELETE", _ds(fresh=True))],
    "dataset.pii_report": [Req("GET", _version("raw", "pii-report/"))],
    "dataset.deidentify": [Req("POST", _version("raw", "deidentify/"), lambda c: {"policy": SIMPLE_POLICY}, 201)],
    # Declared action dataset.download; a raw version also needs dataset.read_raw (SECONDARY_ACTIONS).
    "dataset.read_raw": [
        Req("GET", _version("raw", "preview/?rows=5")),
        Req("GET", _version("raw", "download/?file_format=csv")),
    ],
    "dataset.download": [
        Req("GET", _version("deid", "preview/?rows=5")),
        Req("GET", _version("deid", "download/?file_format=parquet")),
        Req("GET", _version("deid", "download/?file_format=csv")),
    ],
    "grant.list": [Req("GET", _ds("grants/")), Req("GET", _grant)],
    "grant.create": [
        Req(
            "POST",
            _ds("grants/", fresh=True),
            lambda c: {"grantee": c.other_tenant().slug, "permission": "process"},
            201,
        ),
    ],
    "grant.revoke": [Req("DELETE", _grant)],
    "budget.view": [Req("GET", _ds("budget/")), Req("GET", _ds("budget/reservations/"))],
    "budget.set": [Req("PUT", _ds("budget/", fresh=True), lambda c: {"epsilon": "2.5", "delta": "0.00001"})],
    "budget.reserve": [
        Req(
            "POST",
            _ds("budget/reservations/", fresh=True),
            lambda c: {"epsilon": "0.1", "delta": "0", "purpose": "matrix"},
            201,
        ),
        Req("POST", _reservation("commit/"), lambda c: {"epsilon_spent": "0.05"}),
        Req("POST", _reservation("release/")),
    ],
    "shared.list": [Req("GET", _t("shared-datasets/")), Req("GET", _shared())],
    "shared.download": [
        Req("GET", _shared("preview/?rows=5")),
        Req("GET", _shared("download/?file_format=parquet")),
        Req("GET", _shared("download/?file_format=csv")),
    ],
    "job.list": [
        Req("GET", _t("jobs/")),
        Req("GET", _t("jobs/?status=succeeded")),
        Req("GET", _job()),
        Req("GET", _job("events/")),
        Req("GET", _job("events/?after=2&kind=metrics")),
        Req("GET", _t("training/quota/")),
        Req("GET", _t("training/catalogue/")),
    ],
    "job.create": [
        Req(
            "POST",
            _t("jobs/"),
            lambda c: {"name": c.unique("Job "), "dataset_version": c.dataset().deid, "spec": TRAIN_SPEC},
            201,
        ),
    ],
    "job.cancel": [Req("DELETE", _job(queued=True))],
    "model.list": [Req("GET", _t("models/")), Req("GET", _model())],
    "model.download": [
        Req("GET", _model("download/")),
        Req("GET", _model("export/?file_format=torchscript")),
    ],
    "model.predict": [Req("POST", _model("predict/"), _predict_body)],
    "federation.list": [
        Req("GET", _t("federations/")),
        Req("GET", _fed()),
        Req("GET", _fed("rounds/")),
        Req("GET", _fed("sites/")),
        Req("GET", _fed("events/?after=0")),
        Req("GET", _t("federation-sites/")),
    ],
    "federation.create": [
        Req(
            "POST",
            _t("federations/"),
            lambda c: {
                "name": c.unique("Federation "),
                "spec": FED_SPEC,
                "sites": [{"dataset_id": c.dataset().id}, {"dataset_id": c.new_dataset().id}],
            },
            201,
        ),
        Req("POST", _fed("start/", fresh=True, approved=True)),
        Req("POST", _fed("cancel/", fresh=True)),
    ],
    "federation.approve": [
        Req("POST", _site("approve/"), lambda c: {"digest": c.cache["site_digest"]}),
        Req("POST", _site("reject/")),
        Req("POST", _site("revoke/")),
    ],
}

# Actions no view declares: their requests are governed by the declared action (the value) and the
# view additionally checks the action itself. A principal must hold both.
#   dataset.read_raw: preview/download declare dataset.download; for a RAW version ``_read_check``
#   (apps/datasets/api/views/versions.py) also requires a membership whose role allows dataset.read_raw
#   (API keys never).
SECONDARY_ACTIONS: dict[str, str] = {"dataset.read_raw": "dataset.download"}

KEY_SCOPE_SETS: tuple[tuple[str, ...], ...] = (("read",), ("write",), ("read", "write"))


def test_request_table_covers_the_matrix() -> None:
    missing = sorted(set(policy.MATRIX) - set(REQUESTS))
    extra = sorted(set(REQUESTS) - set(policy.MATRIX))
    assert not missing, f"actions in policy.MATRIX without a request in REQUESTS: {missing}"
    assert not extra, f"REQUESTS names actions that policy.MATRIX does not define: {extra}"
    assert set(SECONDARY_ACTIONS) <= set(policy.MATRIX) and set(SECONDARY_ACTIONS.values()) <= set(policy.MATRIX)


def _ctx_maker(
    tenant: Any, make_user: Callable[..., Any], make_tenant: Callable[..., Any], api_client_for: Callable[[Any], Any]
) -> Callable[[Any], Ctx]:
    """Ctx per principal, sharing the counter and the cached targets within the test."""
    seq: list[int] = [0]
    cache: dict[str, Any] = {}
    return lambda actor: Ctx(
        tenant=tenant,
        actor=actor,
        make_user=make_user,
        make_tenant=make_tenant,
        api_client_for=api_client_for,
        seq=seq,
        cache=cache,
    )


@pytest.mark.parametrize("action", list(REQUESTS))
def test_each_request_is_routed_to_its_action(
    action: str,
    tenant: Any,
    make_user: Callable[..., Any],
    make_tenant: Callable[..., Any],
    api_client_for: Callable[[Any], Any],
) -> None:
    """The request we use for an action really is governed by that action (else the table lies);
    a secondary action's requests are governed by its declared action (``SECONDARY_ACTIONS``)."""
    ctx = _ctx_maker(tenant, make_user, make_tenant, api_client_for)(make_user())
    expected = SECONDARY_ACTIONS.get(action, action)
    for req in REQUESTS[action]:
        path = req.path(ctx).split("?")[0]
        view_cls = resolve(path).func.cls  # type: ignore[attr-defined]
        declared = view_cls.permission_actions.get(req.method) or view_cls.permission_action
        assert declared == expected, (req.method, path, declared, action)


def _dispatch(client: Any, req: Req, ctx: Ctx) -> tuple[Any, bytes]:
    """Send the request; returns the response and its body (a streamed body is read in full)."""
    path = req.path(ctx)
    fn = getattr(client, req.method.lower())
    if req.body is None:
        r = fn(path)
    elif req.fmt == "octet":
        r = fn(path, req.body(ctx), content_type="application/octet-stream")
    else:
        r = fn(path, req.body(ctx), format=req.fmt)
    content = b"".join(r.streaming_content) if getattr(r, "streaming", False) else r.content
    return r, content


def _role_allowed(role: str, action: str) -> bool:
    declared = SECONDARY_ACTIONS.get(action, action)
    return policy.role_allows(role, action) and policy.role_allows(role, declared)


def _key_allowed(scopes: tuple[str, ...], action: str) -> bool:
    declared = SECONDARY_ACTIONS.get(action, action)
    return policy.api_key_allows(list(scopes), action) and policy.api_key_allows(list(scopes), declared)


@pytest.mark.parametrize("action", list(policy.MATRIX))
def test_roles(
    action: str,
    tenant: Any,
    member: Callable[..., Any],
    make_user: Callable[..., Any],
    make_tenant: Callable[..., Any],
    api_client_for: Callable[[Any], Any],
) -> None:
    new_ctx = _ctx_maker(tenant, make_user, make_tenant, api_client_for)
    problems: list[str] = []
    for role in policy.ROLES:
        user = member(role)
        client = api_client_for(user)
        ctx = new_ctx(user)
        for req in REQUESTS[action]:
            r, content = _dispatch(client, req, ctx)
            if _role_allowed(role, action):
                if r.status_code != req.ok:
                    problems.append(f"{role} {req.method}: expected {req.ok}, got {r.status_code} {content[:200]!r}")
            elif r.status_code != 403:
                problems.append(f"{role} {req.method}: expected 403, got {r.status_code} {content[:200]!r}")
            else:
                assert assert_error_shape(r)["code"] == "permission_denied"
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("action", list(policy.MATRIX))
def test_api_key_scopes(
    action: str,
    tenant: Any,
    make_user: Callable[..., Any],
    make_tenant: Callable[..., Any],
    api_key_for: Callable[..., str],
    api_client_for: Callable[[Any], Any],
) -> None:
    new_ctx = _ctx_maker(tenant, make_user, make_tenant, api_client_for)
    problems: list[str] = []
    for scopes in KEY_SCOPE_SETS:
        client = api_client_for(api_key_for(tenant, scopes=scopes))
        ctx = new_ctx(None)
        expected_ok = _key_allowed(scopes, action)
        for req in REQUESTS[action]:
            r, content = _dispatch(client, req, ctx)
            if expected_ok and r.status_code != req.ok:
                problems.append(f"key{scopes} {req.method}: expected {req.ok}, got {r.status_code} {content[:200]!r}")
            if not expected_ok:
                if r.status_code != 403:
                    problems.append(f"key{scopes} {req.method}: expected 403, got {r.status_code} {content[:200]!r}")
                else:
                    assert_error_shape(r)
    assert not problems, "\n".join(problems)


def test_policy_helpers_fail_closed() -> None:
    assert not policy.role_allows(Role.OWNER, "no.such.action")
    assert not policy.api_key_allows(["read", "write"], "no.such.action")
    assert not policy.role_allows("superuser", "tenant.view")
    # A key never does what the integrator role may not, whatever its scopes.
    for action, (roles, scope, _) in policy.MATRIX.items():
        if policy.API_KEY_ROLE not in roles or scope is None:
            assert not policy.api_key_allows(["read", "write"], action), action
