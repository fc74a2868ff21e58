"""AUD-1: every mutating API route (found by walking the URL resolver) writes exactly one complete
audit event carrying the request's X-Request-ID. A new route without a request builder here fails.

The rule is "exactly one event per audit chain the request touches": an action that concerns two
tenants writes one event in each tenant's chain, by design, and each must be complete. These are
granting and revoking (``grant.created``/``grant.received``, ``grant.revoked``/``grant.lost``), a
grantee's budget reservation (``budget.reserved`` in the grantee's and the owner's chain) and a
grantee's read of a shared dataset (``dataset.shared_read`` in the grantee's chain,
``dataset.read_by_grantee`` in the owner's). Every other request writes one event in one chain.
Sensitive reads (audit export, version preview and download, shared preview and download, model
weights download) are held to the same rule. A refused upload writes ``dataset.upload_rejected`` instead (not covered here:
the builders send valid requests)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

from apps.accounts.services import api_key_create
from apps.audit.models import AuditEvent
from apps.tenancy.models import Membership, Role, Tenant
from apps.tenancy.scope import platform_scope, tenant_scope
from apps.tenancy.services import invitation_create
from tests.conftest import write_report

API_PREFIX = "api/v1/"
MUTATING = ("POST", "PUT", "PATCH", "DELETE")
PASSWORD = "correct-horse-battery"


def api_routes(methods: tuple[str, ...] = MUTATING) -> list[str]:
    """``"METHOD route"`` for every (view method, URL pattern) under /api/v1/ that the views implement."""
    found: list[str] = []

    def walk(patterns: list[Any], prefix: str) -> None:
        for p in patterns:
            route = prefix + str(p.pattern)
            if isinstance(p, URLResolver):
                walk(p.url_patterns, route)
                continue
            assert isinstance(p, URLPattern)
            if not route.startswith(API_PREFIX):
                continue
            view = getattr(p.callback, "view_class", None) or getattr(p.callback, "cls", None)
            if view is None:  # a function view: its methods cannot be listed, so it needs a builder anyway
                found.append(f"ANY {route}")
                continue
            found.extend(
                f"{m} {route}"
                for m in methods
                if m.lower() in view.http_method_names and callable(getattr(view, m.lower(), None))
            )

    walk(get_resolver().url_patterns, "")
    return found


@dataclass
class World:
    """What the request builders need: one tenant, its owner signed in, and the factories."""

    tenant: Tenant
    owner: Any
    client: APIClient
    make_user: Callable[..., Any]
    member: Callable[..., Any]
    api_client_for: Callable[..., APIClient]
    make_tenant: Callable[..., Any] = lambda: None
    counter: itertools.count = field(default_factory=lambda: itertools.count(1))
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"/api/v1/tenants/{self.tenant.slug}"

    def membership_of(self, role: str) -> Membership:
        user = self.member(role, tenant=self.tenant)
        with tenant_scope(self.tenant.pk):
            return Membership.objects.get(user=user)


@dataclass
class Call:
    """One request to send, the status it must get, and the event it must produce."""

    client: APIClient
    method: str
    path: str
    body: dict[str, Any] | None
    status: int
    action: str
    tenant_id: int | None  # None: a platform event (platform chain)
    # The other chains this request writes one event in, by design: (tenant id, action).
    also: tuple[tuple[int, str], ...] = ()
    content: str = "json"  # "multipart" for file uploads, "octet" for raw chunks (body["data"])


def _login(w: World) -> Call:
    user = w.make_user()
    c = w.api_client_for(None)
    c.credentials(HTTP_X_CSRFTOKEN=c.get("/api/v1/auth/csrf/").json()["csrf_token"])
    return Call(c, "POST", "/api/v1/auth/login/", {"email": user.email, "password": PASSWORD}, 200, "auth.login", None)


def _logout(w: World) -> Call:
    return Call(w.api_client_for(w.make_user()), "POST", "/api/v1/auth/logout/", None, 204, "auth.logout", None)


def _api_key_create(w: World) -> Call:
    return Call(
        w.client, "POST", f"{w.base}/api-keys/", {"name": "ci", "scopes": ["read"]}, 201, "api_key.created", w.tenant.pk
    )


def _api_key_revoke(w: World) -> Call:
    with tenant_scope(w.tenant.pk):
        key = api_key_create(tenant=w.tenant, created_by=w.owner, name="old", scopes=["read"], expires_at=None).key
    return Call(w.client, "DELETE", f"{w.base}/api-keys/{key.pk}/", None, 200, "api_key.revoked", w.tenant.pk)


def _tenant_update(w: World) -> Call:
    return Call(w.client, "PATCH", f"{w.base}/", {"name": "Renamed"}, 200, "tenant.updated", w.tenant.pk)


def _member_add(w: World) -> Call:
    return Call(
        w.client,
        "POST",
        f"{w.base}/members/",
        {"email": w.make_user().email, "role": "analyst"},
        201,
        "member.added",
        w.tenant.pk,
    )


def _member_change_role(w: World) -> Call:
    m = w.membership_of(Role.ANALYST)
    return Call(
        w.client, "PATCH", f"{w.base}/members/{m.pk}/", {"role": "auditor"}, 200, "member.role_changed", w.tenant.pk
    )


def _member_remove(w: World) -> Call:
    m = w.membership_of(Role.ANALYST)
    return Call(w.client, "DELETE", f"{w.base}/members/{m.pk}/", None, 204, "member.removed", w.tenant.pk)


def _invitation_create(w: World) -> Call:
    return Call(
        w.client,
        "POST",
        f"{w.base}/invitations/",
        {"email": "new@example.org", "role": "analyst"},
        201,
        "invitation.created",
        w.tenant.pk,
    )


def _invite(w: World, email: str) -> tuple[Any, str]:
    with tenant_scope(w.tenant.pk):
        return invitation_create(
            tenant=w.tenant, actor_role=Role.OWNER, invited_by=w.owner, email=email, role=Role.ANALYST
        )


def _invitation_revoke(w: World) -> Call:
    inv, _token = _invite(w, f"revoke{next(w.counter)}@example.org")
    return Call(w.client, "DELETE", f"{w.base}/invitations/{inv.pk}/", None, 200, "invitation.revoked", w.tenant.pk)


def _invitation_accept(w: World) -> Call:
    invitee = w.make_user()
    _inv, token = _invite(w, invitee.email)
    return Call(
        w.api_client_for(invitee),
        "POST",
        "/api/v1/invitations/accept/",
        {"token": token},
        201,
        "invitation.accepted",
        w.tenant.pk,
    )


def _audit_verify(w: World) -> Call:
    return Call(w.client, "POST", f"{w.base}/audit-events/verify/", None, 200, "audit.verified", w.tenant.pk)


def _audit_export(w: World) -> Call:
    return Call(
        w.client, "GET", f"{w.base}/audit-events/export/?file_format=csv", None, 200, "audit.exported", w.tenant.pk
    )


# --- datasets ------------------------------------------------------------------------------------


def _dataset(w: World) -> int:
    from tests.apps.datasets.helpers import create_dataset

    return create_dataset(w.client, w.tenant.slug, f"aud1 dataset {next(w.counter)}")


def _ready(w: World) -> tuple[int, int, int]:
    """One dataset with a raw and a de-identified version (made once): (dataset, raw, deidentified)."""
    from tests.apps.datasets.helpers import deidentify, table_csv, upload_version

    if "ready" not in w.cache:
        ds = _dataset(w)
        raw = upload_version(w.client, w.tenant.slug, ds, table_csv(12))
        deid = deidentify(w.client, w.tenant.slug, ds, raw["id"])
        w.cache["ready"] = (ds, raw["id"], deid["id"])
    return w.cache["ready"]


def _partner(w: World, permission: str) -> tuple[Tenant, APIClient]:
    """Another tenant holding a ``permission`` grant on the ready dataset, and its owner's client."""
    key = f"partner-{permission}"
    if key not in w.cache:
        ds, _raw, _deid = _ready(w)
        other = w.make_tenant()
        r = w.client.post(
            f"{w.base}/datasets/{ds}/grants/", {"grantee": other.slug, "permission": permission}, format="json"
        )
        assert r.status_code == 201, r.content
        w.cache[key] = (other, w.api_client_for(w.member(Role.OWNER, tenant=other)))
    return w.cache[key]


def _dataset_create(w: World) -> Call:
    return Call(w.client, "POST", f"{w.base}/datasets/", {"name": "aud1 new"}, 201, "dataset.created", w.tenant.pk)


def _dataset_update(w: World) -> Call:
    ds = _dataset(w)
    return Call(
        w.client, "PATCH", f"{w.base}/datasets/{ds}/", {"description": "x"}, 200, "dataset.updated", w.tenant.pk
    )


def _dataset_delete(w: World) -> Call:
    ds = _dataset(w)
    return Call(w.client, "DELETE", f"{w.base}/datasets/{ds}/", None, 200, "dataset.deleted", w.tenant.pk)


def _version_upload(w: World) -> Call:
    from tests.apps.datasets.helpers import named, table_csv

    ds = _dataset(w)
    return Call(
        w.client,
        "POST",
        f"{w.base}/datasets/{ds}/versions/",
        {"file": named(table_csv(8))},
        201,
        "dataset.version_uploaded",
        w.tenant.pk,
        content="multipart",
    )


def _deidentify(w: World) -> Call:
    from tests.apps.datasets.helpers import SIMPLE_POLICY

    ds, raw, _deid = _ready(w)
    return Call(
        w.client,
        "POST",
        f"{w.base}/datasets/{ds}/versions/{raw}/deidentify/",
        {"policy": SIMPLE_POLICY},
        201,
        "dataset.deidentified",
        w.tenant.pk,
    )


def _grant_create(w: World) -> Call:
    ds, _raw, _deid = _ready(w)
    other = w.make_tenant()
    return Call(
        w.client,
        "POST",
        f"{w.base}/datasets/{ds}/grants/",
        {"grantee": other.slug, "permission": "process"},
        201,
        "grant.created",
        w.tenant.pk,
        also=((other.pk, "grant.received"),),
    )


def _grant_revoke(w: World) -> Call:
    ds, _raw, _deid = _ready(w)
    other = w.make_tenant()
    r = w.client.post(
        f"{w.base}/datasets/{ds}/grants/", {"grantee": other.slug, "permission": "process"}, format="json"
    )
    assert r.status_code == 201, r.content
    return Call(
        w.client,
        "DELETE",
        f"{w.base}/datasets/{ds}/grants/{r.json()['id']}/",
        None,
        200,
        "grant.revoked",
        w.tenant.pk,
        also=((other.pk, "grant.lost"),),
    )


def _budget_set(w: World) -> Call:
    ds = _dataset(w)
    return Call(
        w.client,
        "PUT",
        f"{w.base}/datasets/{ds}/budget/",
        {"epsilon": "5", "delta": "0.000001"},
        200,
        "budget.set",
        w.tenant.pk,
    )


def _budget_reserve(w: World) -> Call:
    """The owner's reservation (grantees' are made by the platform when their jobs start; the
    route answers them 403)."""
    ds = _dataset(w)
    return Call(
        w.client,
        "POST",
        f"{w.base}/datasets/{ds}/budget/reservations/",
        {"epsilon": "0.1", "delta": "0", "purpose": "aud1"},
        201,
        "budget.reserved",
        w.tenant.pk,
    )


def _reservation(w: World) -> tuple[int, int]:
    ds = _dataset(w)
    r = w.client.post(
        f"{w.base}/datasets/{ds}/budget/reservations/",
        {"epsilon": "0.2", "delta": "0", "purpose": "aud1"},
        format="json",
    )
    assert r.status_code == 201, r.content
    return ds, int(r.json()["id"])


def _budget_commit(w: World) -> Call:
    ds, res = _reservation(w)
    path = f"{w.base}/datasets/{ds}/budget/reservations/{res}/commit/"
    return Call(w.client, "POST", path, {"epsilon_spent": "0.1"}, 200, "budget.committed", w.tenant.pk)


def _budget_release(w: World) -> Call:
    ds, res = _reservation(w)
    path = f"{w.base}/datasets/{ds}/budget/reservations/{res}/release/"
    return Call(w.client, "POST", path, None, 200, "budget.released", w.tenant.pk)


def _session(w: World, size: int) -> int:
    r = w.client.post(
        f"{w.base}/uploads/", {"dataset_id": _dataset(w), "filename": "a.csv", "size": size}, format="json"
    )
    assert r.status_code == 201, r.content
    return int(r.json()["id"])


def _upload_create(w: World) -> Call:
    ds = _dataset(w)
    body = {"dataset_id": ds, "filename": "a.csv", "size": 100}
    return Call(w.client, "POST", f"{w.base}/uploads/", body, 201, "upload.created", w.tenant.pk)


def _upload_put(w: World) -> Call:
    up = _session(w, 100)
    return Call(
        w.client,
        "PUT",
        f"{w.base}/uploads/{up}/?offset=0",
        {"data": b"x" * 10},
        200,
        "upload.part_stored",
        w.tenant.pk,
        content="octet",
    )


def _upload_abort(w: World) -> Call:
    up = _session(w, 100)
    return Call(w.client, "DELETE", f"{w.base}/uploads/{up}/", None, 200, "upload.aborted", w.tenant.pk)


def _upload_complete(w: World) -> Call:
    import hashlib

    from tests.apps.datasets.helpers import table_csv

    data = table_csv(8)
    up = _session(w, len(data))
    r = w.client.put(f"{w.base}/uploads/{up}/?offset=0", data, content_type="application/octet-stream")
    assert r.status_code == 200, r.content
    return Call(
        w.client,
        "POST",
        f"{w.base}/uploads/{up}/complete/",
        {"sha256": hashlib.sha256(data).hexdigest()},
        201,
        "dataset.version_uploaded",
        w.tenant.pk,
    )


def _version_preview(w: World) -> Call:
    ds, _raw, deid = _ready(w)
    path = f"{w.base}/datasets/{ds}/versions/{deid}/preview/"
    return Call(w.client, "GET", path, None, 200, "dataset.previewed", w.tenant.pk)


def _version_download(w: World) -> Call:
    """The raw version: the most sensitive read there is."""
    ds, raw, _deid = _ready(w)
    path = f"{w.base}/datasets/{ds}/versions/{raw}/download/"
    return Call(w.client, "GET", path, None, 200, "dataset.raw_read", w.tenant.pk)


def _shared_read(op: str) -> Callable[[World], Call]:
    def build(w: World) -> Call:
        ds, _raw, _deid = _ready(w)
        other, client = _partner(w, "download")
        path = f"/api/v1/tenants/{other.slug}/shared-datasets/{ds}/{op}/"
        return Call(
            client,
            "GET",
            path,
            None,
            200,
            "dataset.shared_read",
            other.pk,
            also=((w.tenant.pk, "dataset.read_by_grantee"),),
        )

    return build


# --- training ------------------------------------------------------------------------------------

TRAIN_SPEC: dict[str, Any] = {"model": {"name": "logistic_regression", "params": {}}, "epochs": 1, "batch_size": 8}


def _trainable(w: World) -> int:
    """A ready de-identified version with a label column (made once)."""
    from tests.apps.datasets.helpers import deidentify, table_csv, upload_version

    if "trainable" not in w.cache:
        ds = _dataset(w)
        raw = upload_version(w.client, w.tenant.slug, ds, table_csv(12), label="outcome")
        w.cache["trainable"] = deidentify(w.client, w.tenant.slug, ds, raw["id"])["id"]
    return int(w.cache["trainable"])


def _queued_job(w: World) -> int:
    from apps.training import services as training

    with tenant_scope(w.tenant.pk):
        job = training.job_create(
            tenant=w.tenant,
            created_by=w.owner,
            name=f"aud1 job {next(w.counter)}",
            dataset_version_id=_trainable(w),
            spec=TRAIN_SPEC,
        )
    return int(job.pk)


def _job_create(w: World) -> Call:
    body = {"name": "aud1 job", "dataset_version": _trainable(w), "spec": TRAIN_SPEC}
    return Call(w.client, "POST", f"{w.base}/jobs/", body, 201, "job.created", w.tenant.pk)


def _federation_simulate(w: World) -> Call:
    """A simulation is a job (kind ``simulate``): one ``job.created``, like any job."""
    body = {"name": "aud1 sim", "dataset_version": _trainable(w), "spec": {"train": TRAIN_SPEC, "rounds": 1},
            "split": {"sites": 2}}  # fmt: skip
    return Call(w.client, "POST", f"{w.base}/federations/simulate/", body, 201, "job.created", w.tenant.pk)


def _job_cancel(w: World) -> Call:
    """A queued job: cancelled at once (one ``job.cancel_requested``)."""
    return Call(w.client, "DELETE", f"{w.base}/jobs/{_queued_job(w)}/", None, 200, "job.cancel_requested", w.tenant.pk)


def _model_download(w: World) -> Call:
    """The weights of a model version (a job run to success by the task body beforehand)."""
    from apps.training import services as training
    from apps.training.models import ModelVersion

    job_id = _queued_job(w)
    assert training.run_job(w.tenant.pk, job_id) == "succeeded"
    with tenant_scope(w.tenant.pk):
        model_id = ModelVersion.objects.get(job_id=job_id).pk
    return Call(w.client, "GET", f"{w.base}/models/{model_id}/download/", None, 200, "model.downloaded", w.tenant.pk)


def _trained_model(w: World) -> int:
    from apps.training import services as training
    from apps.training.models import ModelVersion

    job_id = _queued_job(w)
    assert training.run_job(w.tenant.pk, job_id) == "succeeded"
    with tenant_scope(w.tenant.pk):
        return int(ModelVersion.objects.get(job_id=job_id).pk)


def _model_predict(w: World) -> Call:
    """Batch predictions: one ``model.predicted`` (row count only)."""
    model_id = _trained_model(w)
    with tenant_scope(w.tenant.pk):
        from apps.training.models import ModelVersion

        names = [c["name"] for c in ModelVersion.objects.get(pk=model_id).encoders["columns"]]
    body = {"rows": [dict.fromkeys(names, 1.0), dict.fromkeys(names, 2.0)]}
    return Call(w.client, "POST", f"{w.base}/models/{model_id}/predict/", body, 200, "model.predicted", w.tenant.pk)


def _model_export(w: World) -> Call:
    model_id = _trained_model(w)
    path = f"{w.base}/models/{model_id}/export/?file_format=torchscript"
    return Call(w.client, "GET", path, None, 200, "model.exported", w.tenant.pk)


# --- federations ----------------------------------------------------------------------------------

FED_SPEC: dict[str, Any] = {"train": TRAIN_SPEC, "rounds": 1, "min_participants": 1}


def _fed_partner(w: World) -> tuple[Tenant, APIClient, int]:
    """Another tenant whose released, labelled dataset is granted ``federate`` to this tenant."""
    from tests.apps.datasets.helpers import create_dataset, deidentify, table_csv, upload_version

    if "fed_partner" not in w.cache:
        other = w.make_tenant()
        client = w.api_client_for(w.member(Role.OWNER, tenant=other))
        ds = create_dataset(client, other.slug, "aud1 federated")
        raw = upload_version(client, other.slug, ds, table_csv(12), label="outcome")
        deidentify(client, other.slug, ds, raw["id"])
        r = client.post(
            f"/api/v1/tenants/{other.slug}/datasets/{ds}/grants/", {"grantee": w.tenant.slug, "permission": "federate"},
            format="json",
        )  # fmt: skip
        assert r.status_code == 201, r.content
        w.cache["fed_partner"] = (other, client, ds)
    return w.cache["fed_partner"]


def _fed_body(w: World) -> dict[str, Any]:
    _other, _client, ds = _fed_partner(w)
    return {"name": f"aud1 federation {next(w.counter)}", "spec": FED_SPEC, "sites": [{"dataset_id": ds}]}


def _new_fed(w: World, *, approved: bool = False) -> tuple[int, int]:
    """(federation id, its site id): a draft over the partner's dataset."""
    other, client, _ds = _fed_partner(w)
    r = w.client.post(f"{w.base}/federations/", _fed_body(w), format="json")
    assert r.status_code == 201, r.content
    fed = int(r.json()["id"])
    inbox = client.get(f"/api/v1/tenants/{other.slug}/federation-sites/").json()["results"]
    site = next(s for s in inbox if s["federation"] == fed)
    if approved:
        r = client.post(
            f"/api/v1/tenants/{other.slug}/federation-sites/{site['id']}/approve/", {"digest": site["digest"]},
            format="json",
        )  # fmt: skip
        assert r.status_code == 200, r.content
    w.cache["fed_digest"] = site["digest"]
    return fed, int(site["id"])


def _federation_create(w: World) -> Call:
    other, _client, _ds = _fed_partner(w)
    return Call(w.client, "POST", f"{w.base}/federations/", _fed_body(w), 201, "federation.created", w.tenant.pk,
                also=((other.pk, "federation.site_invited"),))  # fmt: skip


def _federation_start(w: World) -> Call:
    other, _client, _ds = _fed_partner(w)
    fed, _site = _new_fed(w, approved=True)
    return Call(w.client, "POST", f"{w.base}/federations/{fed}/start/", None, 200, "federation.started",
                w.tenant.pk, also=((other.pk, "federation.site_started"),))  # fmt: skip


def _federation_cancel(w: World) -> Call:
    other, _client, _ds = _fed_partner(w)
    fed, _site = _new_fed(w)
    return Call(w.client, "POST", f"{w.base}/federations/{fed}/cancel/", None, 200, "federation.cancelled",
                w.tenant.pk, also=((other.pk, "federation.cancelled"),))  # fmt: skip


def _site_decision(op: str, action: str) -> Callable[[World], Call]:
    def build(w: World) -> Call:
        other, client, _ds = _fed_partner(w)
        _fed, site = _new_fed(w)
        body = {"digest": w.cache["fed_digest"]} if op == "approve" else {}
        path = f"/api/v1/tenants/{other.slug}/federation-sites/{site}/{op}/"
        return Call(client, "POST", path, body, 200, action, other.pk, also=((w.tenant.pk, action),))

    return build


T = "api/v1/tenants/<slug:tenant_slug>"
D = f"{T}/datasets/<pk:dataset_id>"
V = f"{D}/versions/<pk:version_id>"
# Every mutating route needs a builder here: a route added without one fails the test below.
BUILDERS: dict[str, Callable[[World], Call]] = {
    "POST api/v1/auth/login/": _login,
    "POST api/v1/auth/logout/": _logout,
    f"POST {T}/api-keys/": _api_key_create,
    f"DELETE {T}/api-keys/<pk:key_id>/": _api_key_revoke,
    f"PATCH {T}/": _tenant_update,
    f"POST {T}/members/": _member_add,
    f"PATCH {T}/members/<pk:member_id>/": _member_change_role,
    f"DELETE {T}/members/<pk:member_id>/": _member_remove,
    f"POST {T}/invitations/": _invitation_create,
    f"DELETE {T}/invitations/<pk:invitation_id>/": _invitation_revoke,
    "POST api/v1/invitations/accept/": _invitation_accept,
    f"POST {T}/audit-events/verify/": _audit_verify,
    f"POST {T}/datasets/": _dataset_create,
    f"PATCH {D}/": _dataset_update,
    f"DELETE {D}/": _dataset_delete,
    f"POST {D}/versions/": _version_upload,
    f"POST {V}/deidentify/": _deidentify,
    f"POST {D}/grants/": _grant_create,
    f"DELETE {D}/grants/<pk:grant_id>/": _grant_revoke,
    f"PUT {D}/budget/": _budget_set,
    f"POST {D}/budget/reservations/": _budget_reserve,
    f"POST {D}/budget/reservations/<pk:reservation_id>/commit/": _budget_commit,
    f"POST {D}/budget/reservations/<pk:reservation_id>/release/": _budget_release,
    f"POST {T}/uploads/": _upload_create,
    f"PUT {T}/uploads/<pk:upload_id>/": _upload_put,
    f"DELETE {T}/uploads/<pk:upload_id>/": _upload_abort,
    f"POST {T}/uploads/<pk:upload_id>/complete/": _upload_complete,
    f"POST {T}/jobs/": _job_create,
    f"POST {T}/models/<pk:model_id>/predict/": _model_predict,
    f"DELETE {T}/jobs/<pk:job_id>/": _job_cancel,
    f"POST {T}/federations/": _federation_create,
    f"POST {T}/federations/simulate/": _federation_simulate,
    f"POST {T}/federations/<pk:federation_id>/start/": _federation_start,
    f"POST {T}/federations/<pk:federation_id>/cancel/": _federation_cancel,
    f"POST {T}/federation-sites/<pk:site_id>/approve/": _site_decision("approve", "federation.site_approved"),
    f"POST {T}/federation-sites/<pk:site_id>/reject/": _site_decision("reject", "federation.site_rejected"),
    f"POST {T}/federation-sites/<pk:site_id>/revoke/": _site_decision("revoke", "federation.site_revoked"),
}
# Sensitive reads (RELIABILITY AUD-1) are held to the same rule.
SENSITIVE_READS: dict[str, Callable[[World], Call]] = {
    f"GET {T}/audit-events/export/": _audit_export,
    f"GET {V}/preview/": _version_preview,
    f"GET {V}/download/": _version_download,
    f"GET {T}/shared-datasets/<pk:dataset_id>/preview/": _shared_read("preview"),
    f"GET {T}/shared-datasets/<pk:dataset_id>/download/": _shared_read("download"),
    f"GET {T}/models/<pk:model_id>/download/": _model_download,
    f"GET {T}/models/<pk:model_id>/export/": _model_export,
}


def missing_fields(event: AuditEvent, call: Call, request_id: str) -> list[str]:
    """The required fields this event lacks or gets wrong."""
    problems = []
    if event.actor_type in ("", "anonymous") or not (event.actor_id or event.actor_label):
        problems.append("actor")
    if call.tenant_id is None:
        if event.tenant_id is not None or event.chain != "platform":
            problems.append("platform")
    elif event.tenant_id != call.tenant_id or event.chain != f"t{call.tenant_id}":
        problems.append("tenant")
    if not event.target_type:
        problems.append("object")
    if event.action != call.action:
        problems.append("action")
    if event.outcome != "success":
        problems.append("outcome")
    if event.created_at is None or event.created_at.utcoffset() is None:
        problems.append("created_at")
    if event.request_id != request_id:
        problems.append("request_id")
    if not event.source_ip:
        problems.append("source_ip")
    return problems


def _last_event_id() -> int:
    with platform_scope():
        return AuditEvent.all_tenants.order_by("-id").values_list("id", flat=True).first() or 0


@pytest.mark.django_db
def test_aud1_every_mutating_route_writes_exactly_one_event(
    tenant: Any, member: Any, make_user: Any, api_client_for: Any, make_tenant: Any
) -> None:
    owner = member("owner")
    w = World(
        tenant=tenant,
        owner=owner,
        client=api_client_for(owner),
        make_user=make_user,
        member=member,
        api_client_for=api_client_for,
        make_tenant=make_tenant,
    )
    _ready(w)  # the tenant's data keys are created on first use (key.created): not by the measured calls
    routes = api_routes()
    reads = [r for r in api_routes(("GET",)) if r in SENSITIVE_READS]
    unbuilt = [r for r in routes if r not in BUILDERS]
    stale = [r for r in BUILDERS if r not in routes]
    results: dict[str, dict[str, Any]] = {}
    for route in [r for r in routes if r in BUILDERS] + reads:
        call = {**BUILDERS, **SENSITIVE_READS}[route](w)
        request_id = f"aud1-{len(results):03d}-{tenant.pk}"
        since = _last_event_id()
        send = getattr(call.client, call.method.lower())
        if call.body is None:
            r = send(call.path, HTTP_X_REQUEST_ID=request_id)
        elif call.content == "multipart":
            r = send(call.path, call.body, format="multipart", HTTP_X_REQUEST_ID=request_id)
        elif call.content == "octet":
            r = send(
                call.path, call.body["data"], content_type="application/octet-stream", HTTP_X_REQUEST_ID=request_id
            )
        else:
            r = send(call.path, call.body, format="json", HTTP_X_REQUEST_ID=request_id)
        with platform_scope():
            new = list(AuditEvent.all_tenants.filter(id__gt=since).order_by("id"))
        # Exactly one event in each chain the request touches (see the module docstring).
        expected = {call.tenant_id: call.action, **dict(call.also)}
        by_chain: dict[int | None, list[AuditEvent]] = {}
        for e in new:
            by_chain.setdefault(e.tenant_id, []).append(e)
        one_per_chain = set(by_chain) == set(expected) and all(len(v) == 1 for v in by_chain.values())
        if one_per_chain:
            missing = [
                f"t{chain}:{m}" if chain != call.tenant_id else m
                for chain, evs in by_chain.items()
                for m in missing_fields(evs[0], replace(call, tenant_id=chain, action=expected[chain]), request_id)
            ]
        else:
            missing = ["exactly_one_event"]
        results[route] = {
            "status": r.status_code,
            "events": [(e.chain, e.action, e.request_id) for e in new],
            "chains": len(expected),
            "one_event_per_chain": one_per_chain,
            "missing": missing,
            "has_object": bool(new) and all(e.target_type for e in new),
        }
        assert r.status_code == call.status, (route, r.status_code, getattr(r, "content", b"")[:300])
    mutating = [r for r in routes if r in BUILDERS]
    exactly_one = sum(results[r]["one_event_per_chain"] for r in mutating)
    missing_count = sum(len(results[r]["missing"]) for r in mutating if results[r]["missing"] != ["exactly_one_event"])
    passed = (
        not unbuilt
        and not stale
        and exactly_one == len(routes)
        and missing_count == 0
        and all(not results[r]["missing"] for r in reads)
    )
    write_report(
        "AUD-1",
        {
            "routes_enumerated": len(routes),
            "routes_with_exactly_one_event": exactly_one,
            "rule": "exactly one event in each audit chain the request touches (two chains, one event each, "
            "for grant create/revoke, a grantee's budget reservation and a grantee's shared read)",
            "routes_writing_two_chains": sorted(r for r, v in results.items() if v["chains"] == 2),
            "missing_field_count": missing_count,
            "routes_without_builder": unbuilt,
            "stale_builders": stale,
            "sensitive_reads_checked": len(reads),
            "events_without_object": sorted(r for r, v in results.items() if not v["has_object"]),
            "routes": results,
        },
        passed,
    )
    assert not unbuilt, f"mutating routes with no request builder in BUILDERS (add one): {unbuilt}"
    assert not stale, f"BUILDERS entries that match no route (renamed or removed?): {stale}"
    assert reads == list(SENSITIVE_READS), reads
    assert exactly_one == len(routes), {r: v["events"] for r, v in results.items() if not v["one_event_per_chain"]}
    assert missing_count == 0 and all(not v["missing"] for v in results.values()), {
        r: v["missing"] for r, v in results.items() if v["missing"]
    }
