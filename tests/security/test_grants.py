"""ISO-8 (grant semantics: process vs download) and ISO-9 (revocation propagates at once).

* ISO-8: tenant A grants B ``process`` on a dataset. B sees it among its shared datasets with the
  schema and aggregate statistics of the de-identified version only; B's preview and download are
  403 (``permission_denied``); A's own dataset routes stay 404 to B, under A's slug and under B's;
  B cannot reach the raw version (API or row-level security); B can reserve privacy budget; the
  gate ``dataset_access`` says process yes, download no. Once A also grants ``download``, B can
  preview and download the DE-IDENTIFIED version only (dropped columns absent, no raw value), and
  each read is audited once in each chain (``dataset.shared_read`` in B's, ``dataset.read_by_grantee``
  in A's). A third tenant C, holding no grant, sees nothing: 404 everywhere, empty lists.
* ISO-9: with a grant live, N units of queued work (each a later ``dataset_access`` call in the
  grantee's scope, as a task does at start) are created; the grant is revoked through the API; all
  N then refuse, and running work (polling the gate, fetching the data key) is refused at its next
  check. The revocation is published to B's job streams, B's shared views close at once, an expired
  grant is refused like a revoked one, and a member removed from B loses access at once. B's
  queued training jobs fail at start; B's running job stops, and its job websocket (a websockets
  client on a real socket to uvicorn) is closed with 4403 within 5 s of the revoke request.

Figures: reports/ISO-8.json, reports/ISO-9.json.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pyarrow.parquet as pq
import pytest

from apps.common.exceptions import NotFound
from apps.datasets import selectors
from apps.datasets.models import DatasetVersion
from apps.tenancy.models import Role
from apps.tenancy.scope import tenant_scope
from tests.apps.datasets.helpers import create_dataset, deidentify, table_csv, upload_version
from tests.conftest import write_report
from tests.security.helpers import admin_connect, app_connect, set_signed_context

pytestmark = pytest.mark.django_db(transaction=True)

CANARY = "Zebediah-Quux"  # planted in the raw name (dropped) and notes (redacted: PII kinds only) columns
DROPPED = ("name", "email")  # dropped by the test policy (tests.apps.datasets.helpers.SIMPLE_POLICY)


def _raw_values(rows: int) -> list[str]:
    """Identifying raw values the de-identified version must not carry."""
    import csv

    reader = csv.DictReader(io.StringIO(table_csv(rows, canary=CANARY).decode()))
    out = []
    for r in reader:
        out += [r["email"], r["patient_id"], r["name"]]
    return out


def _events(after_id: int, dataset_id: int) -> list[tuple[int | None, str]]:
    """(chain tenant, action) of committed events after ``after_id`` about ``dataset_id``."""
    with admin_connect() as su:
        rows = su.execute(
            "SELECT tenant_id, action FROM audit_auditevent WHERE id > %s AND details::jsonb->>'dataset_id' = %s ORDER BY id",
            [after_id, str(dataset_id)],
        ).fetchall()
    return [(r[0], r[1]) for r in rows]


def _last_event_id() -> int:
    with admin_connect() as su:
        return int(su.execute("SELECT coalesce(max(id), 0) FROM audit_auditevent").fetchone()[0])


def _gate(consumer: Any, dataset_id: int, permission: str = "process") -> bool:
    """What a task does before it starts and at each step: the gate, in the consumer's scope."""
    with tenant_scope(consumer.pk):
        return selectors.dataset_access(consumer=consumer, dataset_id=dataset_id, permission=permission)


def _rls_versions_visible(tenant_id: int, dataset_id: int) -> set[int]:
    """Version ids of the dataset the app role sees with ``tenant_id`` in scope (RLS alone)."""
    with app_connect(autocommit=True) as conn, conn.transaction():
        set_signed_context(conn, tenant_id=tenant_id)
        rows = conn.execute("SELECT id FROM datasets_datasetversion WHERE dataset_id = %s", [dataset_id]).fetchall()
    return {r[0] for r in rows}


def _shared_world(
    make_tenant: Callable[..., Any], member: Callable[..., Any], api_client_for: Callable[[Any], Any], rows: int = 30
) -> dict[str, Any]:
    a, b, c = make_tenant(), make_tenant(), make_tenant()
    a_owner = api_client_for(member(Role.OWNER, tenant=a))
    ds = create_dataset(a_owner, a.slug, "Grant semantics cohort")
    raw = upload_version(a_owner, a.slug, ds, table_csv(rows, canary=CANARY))
    deid = deidentify(a_owner, a.slug, ds, raw["id"])
    return {
        "a": a,
        "b": b,
        "c": c,
        "a_owner": a_owner,
        "b_owner_user": member(Role.OWNER, tenant=b),
        "b_analyst_user": member(Role.ANALYST, tenant=b),
        "c_owner": api_client_for(member(Role.OWNER, tenant=c)),
        "ds": ds,
        "raw": raw,
        "deid": deid,
        "rows": rows,
    }


def _grant(client: Any, slug: str, ds: int, grantee: str, permission: str) -> int:
    r = client.post(
        f"/api/v1/tenants/{slug}/datasets/{ds}/grants/", {"grantee": grantee, "permission": permission}, format="json"
    )
    assert r.status_code == 201, r.content
    return int(r.json()["id"])


# --- ISO-8 ---------------------------------------------------------------------------------------


def test_iso8_process_and_download_grants(
    make_tenant: Callable[..., Any], member: Callable[..., Any], api_client_for: Callable[[Any], Any]
) -> None:
    w = _shared_world(make_tenant, member, api_client_for)
    a, b, c, ds, raw, deid = w["a"], w["b"], w["c"], w["ds"], w["raw"], w["deid"]
    a_owner = w["a_owner"]
    b_owner, b_analyst = api_client_for(w["b_owner_user"]), api_client_for(w["b_analyst_user"])
    raw_values = _raw_values(w["rows"])
    violations: list[str] = []
    checks = 0

    def check(ok: bool, what: str) -> None:
        nonlocal checks
        checks += 1
        if not ok:
            violations.append(what)

    def leaks(content: bytes) -> list[str]:
        text = content.decode("utf-8", "replace")
        return [v for v in raw_values if v and v in text][:3]

    bs, base_a = f"/api/v1/tenants/{b.slug}/", f"/api/v1/tenants/{a.slug}/"
    _grant(a_owner, a.slug, ds, b.slug, "process")

    # B sees the dataset as shared: schema and aggregate statistics of the de-identified version.
    for who, cl in (("owner", b_owner), ("analyst", b_analyst)):
        r = cl.get(f"{bs}shared-datasets/")
        listed = r.json().get("results", []) if r.status_code == 200 else []
        check([d["id"] for d in listed] == [ds], f"B {who}: shared list {r.status_code} {[d['id'] for d in listed]}")
        check(not leaks(r.content), f"B {who}: shared list carries raw values {leaks(r.content)}")
    r = b_analyst.get(f"{bs}shared-datasets/{ds}/")
    detail = r.json() if r.status_code == 200 else {}
    version = detail.get("version") or {}
    check(r.status_code == 200 and detail.get("permissions") == ["process"], f"shared detail {r.status_code}")
    check(version.get("id") == deid["id"], f"shared detail shows version {version.get('id')}, not the de-identified")
    check(bool(version.get("schema")) and bool(version.get("statistics")), "shared detail lacks schema/statistics")
    cols = [col["name"] for col in (version.get("schema") or {}).get("columns", [])]
    check(not set(DROPPED) & set(cols), f"shared schema names dropped columns {cols}")
    check(not leaks(r.content), f"shared detail carries raw values {leaks(r.content)}")

    # Process only: no preview, no download (403 permission_denied), for every role.
    for who, cl in (("owner", b_owner), ("analyst", b_analyst)):
        for op in ("preview", "download"):
            r = cl.get(f"{bs}shared-datasets/{ds}/{op}/")
            code = r.json().get("error", {}).get("code") if r.status_code == 403 else None
            check(r.status_code == 403 and code == "permission_denied", f"B {who} {op} on process: {r.status_code}")
            check(not leaks(r.content), f"B {who} {op}: raw values in the refusal")

    # A's own dataset routes stay closed to B: under A's slug and under B's own slug.
    own_routes = [
        f"datasets/{ds}/",
        f"datasets/{ds}/versions/",
        f"datasets/{ds}/versions/{raw['id']}/",
        f"datasets/{ds}/versions/{deid['id']}/",
        f"datasets/{ds}/versions/{raw['id']}/pii-report/",
        f"datasets/{ds}/versions/{raw['id']}/preview/",
        f"datasets/{ds}/versions/{raw['id']}/download/",
        f"datasets/{ds}/versions/{deid['id']}/preview/",
        f"datasets/{ds}/versions/{deid['id']}/download/",
        f"datasets/{ds}/grants/",
    ]
    for path in own_routes:
        for base in (base_a, bs):
            r = b_owner.get(base + path)
            check(r.status_code == 404, f"B owner GET {base}{path} -> {r.status_code}")
            check(not leaks(r.content), f"B owner GET {base}{path}: raw values")
    r = b_owner.patch(f"{bs}datasets/{ds}/", {"name": "taken"}, format="json")
    check(r.status_code == 404, f"B PATCH A's dataset under B's slug -> {r.status_code}")
    r = b_owner.put(f"{bs}datasets/{ds}/budget/", {"epsilon": "999", "delta": "0.001"}, format="json")
    check(r.status_code == 404, f"B sets A's budget -> {r.status_code}")

    # The raw version is beyond B's reach in the database too (RLS alone), the de-identified one is not.
    seen = _rls_versions_visible(b.pk, ds)
    check(seen == {deid["id"]}, f"RLS: B sees versions {seen}")
    with tenant_scope(b.pk):
        raw_orm = DatasetVersion.all_tenants.filter(pk=raw["id"]).exists()
    check(not raw_orm, "ORM in B's scope finds the raw version")

    # B does not reserve privacy budget through the API: the platform does, within B's allotment,
    # when B's job or federation starts (tests/security/test_probe_findings.py).
    r = b_analyst.post(
        f"{bs}datasets/{ds}/budget/reservations/",
        {"epsilon": "0.5", "delta": "0", "purpose": "federated round"},
        format="json",
    )
    check(r.status_code == 403, f"B reserve budget -> {r.status_code} {r.content[:200]!r}")

    gate = {
        "process": _gate(b, ds, "process"),
        "download": _gate(b, ds, "download"),
        "no_scope": selectors.dataset_access(consumer=b, dataset_id=ds, permission="process"),
    }
    check(gate["process"] is True, "dataset_access(B, process) is not True under a process grant")
    check(gate["download"] is False, "dataset_access(B, download) is not False under a process grant")
    check(gate["no_scope"] is False, "dataset_access without a tenant scope is not False (fail closed)")

    # Download granted: B reads the de-identified version only, each read audited in both chains.
    _grant(a_owner, a.slug, ds, b.slug, "download")
    check(_gate(b, ds, "download") is True, "dataset_access(B, download) is not True after the download grant")
    reads: dict[str, Any] = {}
    for op, query in (("preview", "?rows=50"), ("download", ""), ("download", "?file_format=csv")):
        before = _last_event_id()
        r = b_analyst.get(f"{bs}shared-datasets/{ds}/{op}/{query}")
        label = f"{op}{query}"
        ok = r.status_code == 200
        check(ok, f"B {label} with download grant -> {r.status_code} {getattr(r, 'content', b'')[:300]!r}")
        if not ok:
            continue
        if op == "preview":
            body = r.json()
            columns, content = body["columns"], r.content
            check(body["version_id"] == deid["id"] and body["kind"] == "deidentified", f"preview of {body['kind']}")
        else:
            content = b"".join(r.streaming_content)
            if "csv" in query:
                columns = content.split(b"\n", 1)[0].decode().strip().split(",")
            else:
                table = pq.read_table(io.BytesIO(content))
                columns = table.column_names
                ids = table.column("patient_id").to_pylist()
                check(all(str(t).startswith("tok_") for t in ids if t), "download: patient_id not pseudonymised")
        check(not set(DROPPED) & set(columns), f"B {label}: dropped columns present {columns}")
        check(not leaks(content), f"B {label}: raw values {leaks(content)}")
        events = _events(before, ds)
        want = sorted([(b.pk, "dataset.shared_read"), (a.pk, "dataset.read_by_grantee")])
        check(sorted(events) == want, f"B {label}: audit events {events}")
        reads[label] = {"status": r.status_code, "columns": columns, "events": events}

    # C, with no grant, sees nothing.
    cs = f"/api/v1/tenants/{c.slug}/"
    c_cl = w["c_owner"]
    for q in ("", f"?q={'Grant semantics'}"):
        r = c_cl.get(f"{cs}shared-datasets/{q}")
        check(r.status_code == 200 and r.json()["results"] == [], f"C shared list{q} -> {r.status_code}")
    for path in (
        f"shared-datasets/{ds}/",
        f"shared-datasets/{ds}/preview/",
        f"shared-datasets/{ds}/download/",
        f"datasets/{ds}/budget/",
        f"datasets/{ds}/budget/reservations/",
        *own_routes,
    ):
        for base in (cs, base_a):
            r = c_cl.get(base + path)
            check(r.status_code == 404, f"C GET {base}{path} -> {r.status_code}")
    r = c_cl.post(
        f"{cs}datasets/{ds}/budget/reservations/", {"epsilon": "0.1", "delta": "0", "purpose": "x"}, format="json"
    )
    check(r.status_code == 404, f"C reserves on A's dataset -> {r.status_code}")
    check(_rls_versions_visible(c.pk, ds) == set(), "RLS: C sees versions of A's dataset")
    check(not _gate(c, ds, "process") and not _gate(c, ds, "download"), "dataset_access(C) is True")

    write_report(
        "ISO-8",
        {
            "violations": len(violations),
            "violation_details": violations[:50],
            "checks": checks,
            "dataset_access": gate,
            "reads_with_download_grant": reads,
            "raw_values_checked": len(raw_values),
            "dropped_columns": list(DROPPED),
            "note": "process = schema + safe statistics (no extremes, counts below k suppressed), no rows "
            "(403 permission_denied on preview/download), no budget reservations through the API (403: the "
            "platform reserves within the grant's allotment); download = the de-identified version only; "
            "a tenant without a grant: 404. "
            "Training outputs (per-site model heads, union/intersection rules) do not exist yet.",
        },
        not violations,
    )
    assert not violations, "\n".join(violations)


# --- ISO-9 ---------------------------------------------------------------------------------------

QUEUED_TASKS = 25  # queued units of work that check the gate when they start
QUEUED_JOBS = 3  # queued training jobs of B, started by a worker after the revocation
SOCKET_CLOSE_BAR_S = 5.0
# Long enough to still be training when the grant is revoked; the revocation stops it.
RUNNING_SPEC = {
    "model": {"name": "logistic_regression", "params": {}},
    "optimizer": {"name": "adamw", "lr": 0.01},
    "epochs": 20_000,
    "batch_size": 8,
    "seed": 3,
    "checkpoint_every_steps": 1_000_000,
    "log_every_steps": 10,
}


class _LiveServer:
    """The ASGI application (config.asgi) served by uvicorn on a loopback port, in a thread of this
    process: a real socket for real websocket clients, with the Redis channel layer of the settings."""

    def __init__(self) -> None:
        import socket

        import uvicorn
        from channels.layers import channel_layers

        channel_layers.backends.clear()  # the settings' (Redis) layer, not one an earlier test cached
        from config.asgi import application

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        config = uvicorn.Config(application, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="iso9-uvicorn", daemon=True)

    def __enter__(self) -> _LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        from channels.layers import channel_layers

        channel_layers.backends.clear()


class _StreamWatcher:
    """A websocket client on the job stream, reading in a thread until the server closes it."""

    def __init__(self, url: str, cookie: str, origin: str) -> None:
        from websockets.sync.client import connect

        self.ws = connect(url, additional_headers={"Cookie": cookie, "Origin": origin}, open_timeout=10)
        self.ws.__enter__()  # the client's own context (websockets warns on a connection used without it)
        self.messages: list[dict[str, Any]] = []
        self.closed_at: float | None = None
        self.close_code: int | None = None
        self.thread = threading.Thread(target=self._read, name="iso9-ws", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            while True:
                self.messages.append(json.loads(self.ws.recv()))
        except ConnectionClosed as exc:
            self.closed_at = time.perf_counter()
            self.close_code = exc.rcvd.code if exc.rcvd is not None else None

    def wait_closed(self, timeout: float) -> bool:
        self.thread.join(timeout=timeout)
        return self.closed_at is not None

    def close(self) -> None:
        self.ws.close()
        self.thread.join(timeout=5)


def _session_cookie(user: Any) -> str:
    from django.test import Client

    c = Client()
    c.force_login(user)
    return f"sessionid={c.cookies['sessionid'].value}"


def _job_status(tenant_id: int, job_id: int) -> tuple[str, str, int]:
    from apps.training.models import TrainingJob

    with tenant_scope(tenant_id):
        job = TrainingJob.objects.get(pk=job_id)
    return job.status, job.status_reason, int(job.progress.get("step", 0))


def _run_job_in_thread(tenant_id: int, job_id: int, outcome: dict[str, Any]) -> threading.Thread:
    """The worker's task body (``run_job``) in a thread of this process, as a worker runs it."""

    def run() -> None:
        from django.db import connections

        from apps.training import services as training

        try:
            outcome["result"] = training.run_job(tenant_id, job_id)
        except Exception as exc:  # reported, not raised in a thread nobody joins with a result
            outcome["result"] = f"raised {type(exc).__name__}: {exc}"
        finally:
            outcome["ended_at"] = time.perf_counter()
            connections.close_all()

    thread = threading.Thread(target=run, name=f"iso9-job{job_id}", daemon=True)
    thread.start()
    return thread


def test_iso9_revocation_propagates_at_once(
    make_tenant: Callable[..., Any], member: Callable[..., Any], api_client_for: Callable[[Any], Any]
) -> None:
    from apps.training import services as training
    from apps.training.models import TrainingJob

    w = _shared_world(make_tenant, member, api_client_for, rows=12)
    a, b, ds, deid = w["a"], w["b"], w["ds"], w["deid"]
    a_owner, b_analyst = w["a_owner"], api_client_for(w["b_analyst_user"])
    bs = f"/api/v1/tenants/{b.slug}/"
    problems: list[str] = []
    grant_id = _grant(a_owner, a.slug, ds, b.slug, "download")

    # A labelled version of the same dataset that B trains on (the 12-row one has no label).
    raw_train = upload_version(a_owner, a.slug, ds, table_csv(200, seed=1), label="outcome")
    train_version = deidentify(a_owner, a.slug, ds, raw_train["id"])["id"]

    # Work queued while the grant is live: each unit checks the gate when it starts.
    queued = [lambda: _gate(b, ds, "process") for _ in range(QUEUED_TASKS)]
    allowed_before = sum(1 for _ in range(3) if _gate(b, ds, "process"))
    if allowed_before != 3:
        problems.append("the gate refused B before the revocation (the test would prove nothing)")
    assert b_analyst.get(f"{bs}shared-datasets/{ds}/preview/").status_code == 200
    with tenant_scope(b.pk):
        held_version = DatasetVersion.all_tenants.get(pk=deid["id"])
        selectors.version_key(consumer=b, version=held_version)  # allowed while the grant lives
        # B's training jobs: one running on a worker, QUEUED_JOBS admitted but not started yet.
        running = training.job_create(
            tenant=b, created_by=None, name="iso9-running", dataset_version_id=train_version, spec=RUNNING_SPEC
        )
        queued_jobs = [
            training.job_create(
                tenant=b, created_by=None, name=f"iso9-queued-{i}", dataset_version_id=train_version, spec=RUNNING_SPEC
            )
            for i in range(QUEUED_JOBS)
        ]
    job_outcome: dict[str, Any] = {}
    job_thread = _run_job_in_thread(b.pk, running.pk, job_outcome)
    try:
        deadline = time.monotonic() + 120
        while not (_job_status(b.pk, running.pk)[0] == "running" and _job_status(b.pk, running.pk)[2] > 0):
            assert time.monotonic() < deadline and job_thread.is_alive(), (job_outcome, _job_status(b.pk, running.pk))
            time.sleep(0.1)

        with _LiveServer() as server:
            origin = f"http://127.0.0.1:{server.port}"
            url = f"ws://127.0.0.1:{server.port}/ws/v1/tenants/{b.slug}/jobs/{running.pk}/"
            stream = _StreamWatcher(url, _session_cookie(w["b_analyst_user"]), origin)
            deadline = time.monotonic() + 10
            while not stream.messages and time.monotonic() < deadline:
                time.sleep(0.05)
            events_before_revoke = len(stream.messages)
            if not events_before_revoke or stream.closed_at is not None:
                problems.append(f"the job stream did not stream before the revocation: {stream.close_code}")

            revoke_started = time.perf_counter()
            r = a_owner.delete(f"/api/v1/tenants/{a.slug}/datasets/{ds}/grants/{grant_id}/")
            revoked_at = time.perf_counter()
            assert r.status_code == 200 and r.json()["status"] == "revoked", r.content

            # Running work: the next gate check and key fetch after the revoke call returns.
            polls = 0
            while _gate(b, ds, "process"):
                polls += 1
                if time.perf_counter() - revoked_at > 10:
                    break
            seconds_until_refused = time.perf_counter() - revoked_at
            if polls:
                problems.append(f"the gate still allowed B {polls} times after the revoke call returned")
            key_refused = False
            try:  # a running job holds the version object it loaded before the revocation
                with tenant_scope(b.pk):
                    selectors.version_key(consumer=b, version=held_version)
            except NotFound:
                key_refused = True
            if not key_refused:
                problems.append("the owner's data key was still handed to B after the revocation")

            # The running job's websocket closes (4403), measured by the client on a real socket.
            socket_closed = stream.wait_closed(timeout=2 * SOCKET_CLOSE_BAR_S)
            seconds_to_close = None if stream.closed_at is None else stream.closed_at - revoke_started
            close_code = stream.close_code
            if not socket_closed:
                stream.close()
                problems.append("the job websocket of B's running job was still open 10 s after the revocation")
            elif close_code != 4403 or seconds_to_close is None or seconds_to_close > SOCKET_CLOSE_BAR_S:
                problems.append(f"job websocket closed with {close_code} after {seconds_to_close} s")

        # The running job itself stops at its next gate check.
        job_thread.join(timeout=30)
        job_status, job_reason, _ = _job_status(b.pk, running.pk)
        seconds_job_stopped = job_outcome["ended_at"] - revoked_at if "ended_at" in job_outcome else None
        if job_status != "failed" or job_reason != "grant_revoked":
            problems.append(f"B's running job ended {job_status!r} ({job_reason!r}), want failed (grant_revoked)")
    finally:
        if job_thread.is_alive():  # stop it before the tables are emptied under it
            with tenant_scope(b.pk):
                TrainingJob.objects.filter(pk=running.pk).update(cancel_requested=True)
            job_thread.join(timeout=30)

    # Queued work starting now: the gate units, and B's queued jobs as a worker starts them.
    refused_units = sum(1 for task in queued if not task())
    job_results = {j.pk: training.run_job(b.pk, j.pk) for j in queued_jobs}
    refused_jobs = 0
    for j in queued_jobs:
        status, reason, steps = _job_status(b.pk, j.pk)
        refused_jobs += int(status == "failed" and "dataset not usable" in reason and steps == 0)
    queued_total = len(queued) + len(queued_jobs)
    refused = refused_units + refused_jobs

    # B's views close at once.
    after: dict[str, int] = {}
    r = b_analyst.get(f"{bs}shared-datasets/")
    after["shared list results"] = len(r.json()["results"]) if r.status_code == 200 else -1
    for path in ("", "preview/", "download/"):
        after[f"shared {path or 'detail'}"] = b_analyst.get(f"{bs}shared-datasets/{ds}/{path}").status_code
    after["reserve budget"] = b_analyst.post(
        f"{bs}datasets/{ds}/budget/reservations/", {"epsilon": "0.1", "delta": "0", "purpose": "late"}, format="json"
    ).status_code
    after["rls versions visible"] = len(_rls_versions_visible(b.pk, ds))
    expected_after = {
        "shared list results": 0,
        "shared detail": 404,
        "shared preview/": 404,
        "shared download/": 404,
        "reserve budget": 404,
        "rls versions visible": 0,
    }
    problems += [
        f"after revocation: {k} = {v}, want {expected_after[k]}" for k, v in after.items() if v != expected_after[k]
    ]

    # An expired grant is refused like a revoked one.
    expired_id = _grant(a_owner, a.slug, ds, b.slug, "download")
    if not _gate(b, ds, "download"):
        problems.append("a fresh download grant was not honoured")
    with admin_connect() as su:
        su.execute(
            "UPDATE datasets_datasetgrant SET expires_at = now() - interval '1 minute' WHERE id = %s", [expired_id]
        )
    expired = {
        "gate_process": _gate(b, ds, "process"),
        "gate_download": _gate(b, ds, "download"),
        "shared_list": len(b_analyst.get(f"{bs}shared-datasets/").json()["results"]),
        "shared_detail": b_analyst.get(f"{bs}shared-datasets/{ds}/").status_code,
        "shared_download": b_analyst.get(f"{bs}shared-datasets/{ds}/download/").status_code,
        "rls_versions_visible": len(_rls_versions_visible(b.pk, ds)),
    }
    want_expired = {
        "gate_process": False,
        "gate_download": False,
        "shared_list": 0,
        "shared_detail": 404,
        "shared_download": 404,
        "rls_versions_visible": 0,
    }
    problems += [
        f"expired grant: {k} = {v}, want {want_expired[k]}" for k, v in expired.items() if v != want_expired[k]
    ]
    listed = a_owner.get(f"/api/v1/tenants/{a.slug}/datasets/{ds}/grants/{expired_id}/").json()
    if listed.get("status") != "expired":
        problems.append(f"the owner sees the expired grant as {listed.get('status')}")

    # A user removed from B loses access at once (a fresh grant, the user's session still open).
    # (process: the expired download grant still blocks a new download grant until it is revoked)
    _grant(a_owner, a.slug, ds, b.slug, "process")
    leaver = member(Role.ANALYST, tenant=b)
    leaver_client = api_client_for(leaver)
    before_removal = leaver_client.get(f"{bs}shared-datasets/{ds}/").status_code
    b_owner = api_client_for(w["b_owner_user"])
    with tenant_scope(b.pk):
        from apps.tenancy.models import Membership

        membership_id = Membership.objects.get(user=leaver).pk
    r = b_owner.delete(f"{bs}members/{membership_id}/")
    assert r.status_code in (200, 204), r.content
    removed = {
        "before": before_removal,
        "shared_detail": leaver_client.get(f"{bs}shared-datasets/{ds}/").status_code,
        "shared_download": leaver_client.get(f"{bs}shared-datasets/{ds}/download/").status_code,
    }
    if removed["before"] != 200 or removed["shared_detail"] != 404 or removed["shared_download"] != 404:
        problems.append(f"removed member: {removed}")

    refusal_ratio = refused / queued_total
    passed = refusal_ratio == 1 and not problems
    write_report(
        "ISO-9",
        {
            "queued_tasks": queued_total,
            "queued_refused": refused,
            "queued_refusal_ratio": round(refusal_ratio, 4),
            "queued_gate_units": len(queued),
            "queued_gate_units_refused": refused_units,
            "queued_jobs": len(queued_jobs),
            "queued_jobs_refused_at_start": refused_jobs,
            "queued_job_results": job_results,
            "seconds_until_refused": round(seconds_until_refused, 4),
            "gate_allowed_after_revoke_returned": polls,
            "data_key_refused_after_revoke": key_refused,
            "job_socket_events_before_revoke": events_before_revoke,
            "job_socket_closed": socket_closed,
            "job_socket_close_code": close_code,
            "seconds_to_close_job_socket": None if seconds_to_close is None else round(seconds_to_close, 4),
            "job_socket_close_bar_seconds": SOCKET_CLOSE_BAR_S,
            "running_job_status": [job_status, job_reason],
            "seconds_to_stop_running_job": None if seconds_job_stopped is None else round(seconds_job_stopped, 4),
            "views_after_revocation": after,
            "expired_grant": expired,
            "removed_member": removed,
            "problems": problems,
            "model": "queued work = gate calls (apps.datasets.selectors.dataset_access in the grantee's scope, as "
            "a task runs at start) created while the grant was live and run after the revoke, plus B's admitted "
            "training jobs started after it by the worker's task body (run_job); running work = a training job "
            "of B running in a worker thread, its job websocket watched by a websockets client over a real "
            "socket to uvicorn (Redis channel layer), timed from the revoke request; polling the gate and "
            "fetching the owner's data key right after the revoke call returns",
        },
        passed,
    )
    assert refused == queued_total, f"{queued_total - refused} queued tasks still allowed after revocation"
    assert not problems, "\n".join(problems)
