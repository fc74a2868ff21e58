"""End-to-end smoke: `scripts/cohort.py run` (what `make run` calls) as real processes.

Embedded mode: nothing but Python: the launcher starts PostgreSQL and Redis from pip wheels,
migrates, seeds, serves HTTP (gunicorn) and websockets (uvicorn) behind one port (scripts/router.py)
and a Celery worker. External mode does the same against the machine's servers. Each run checks the
API (answered by gunicorn), a session login with CSRF, a live websocket event (uvicorn, same port), a
Celery task round trip, a clean Ctrl-C of every process, and that a second start reuses it all.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.e2e]


# Set by the test settings for this process; the launched server must use its own state folder.
TEST_STATE_VARS = ("COHORT_KEY_DIR", "COHORT_OBJECT_DIR", "COHORT_TMP_DIR", "COHORT_CHECKPOINT_DIR", "COHORT_KEK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**env, "COHORT_DATASET_INLINE_MAX_BYTES": "1000"}  # small uploads go to the worker too
    return subprocess.Popen(
        [sys.executable, "scripts/cohort.py", "run", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait_ready(base: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"launcher exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    pytest.fail(f"not ready after {timeout}s:\n{log.read_text()[-4000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> list[int]:
    """Ctrl-C the whole process group, as a terminal does; return pids that survived."""
    children = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("launcher did not stop within 60 s of Ctrl-C")
    time.sleep(1)
    return [pid for pid in children if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]


def _exercise(base: str, state: Path, redis_url: str | None) -> None:
    creds = json.loads((state / "demo-credentials.json").read_text())
    key = creds["integrator_api_key"]
    r = httpx.get(f"{base}/api/v1/tenants/", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert r.status_code == 200 and r.json()[0]["slug"] == "st-marys", r.text
    assert r.headers["server"] == "gunicorn", r.headers  # REST is served by WSGI behind the one port
    # A /ws/ path goes to uvicorn (ASGI) even as plain HTTP: no HTTP route there, so a 404 from it.
    r = httpx.get(f"{base}/ws/v1/tenants/st-marys/audit/", timeout=10)
    assert r.status_code == 404 and r.headers["server"] == "uvicorn", r.headers
    assert httpx.get(f"{base}/api/docs/", timeout=10).status_code == 200
    assert httpx.get(f"{base}/admin/login/", timeout=10).status_code == 200

    with httpx.Client(base_url=base, timeout=10) as owner, httpx.Client(base_url=base, timeout=10) as auditor:
        for client, email, pw in (
            (owner, "owner@st-marys.example", "cohort-demo-owner"),
            (auditor, "auditor@st-marys.example", "cohort-demo-auditor"),
        ):
            token = client.get("/api/v1/auth/csrf/").json()["csrf_token"]
            r = client.post(
                "/api/v1/auth/login/",
                json={"email": email, "password": pw},
                headers={"X-CSRFToken": token, "Referer": base + "/"},
            )
            assert r.status_code == 200, r.text
        cookie = "; ".join(f"{k}={v}" for k, v in auditor.cookies.items())
        ws_url = base.replace("http://", "ws://") + "/ws/v1/tenants/st-marys/audit/"
        with ws_connect(ws_url, additional_headers={"Cookie": cookie, "Origin": base}, open_timeout=10) as ws:
            csrf = owner.cookies["csrftoken"]
            r = owner.post(
                "/api/v1/tenants/st-marys/api-keys/",
                json={"name": "e2e", "scopes": ["read"]},
                headers={"X-CSRFToken": csrf, "Referer": base + "/"},
            )
            assert r.status_code == 201, r.text
            # Other events of the tenant may come first (the demo job's worker creates its key).
            seen: list[str] = []
            deadline = time.monotonic() + 10
            while "api_key.created" not in seen and time.monotonic() < deadline:
                msg = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
                assert msg["type"] == "audit.event", msg
                seen.append(msg["event"]["action"])
            assert "api_key.created" in seen, seen

        # The one endpoint (/ws/v1/) through the real router and uvicorn: the auditor's session
        # subscribes to the tenant's activity stream and sees the owner's next action live,
        # numbered by the audit chain; another tenant's stream answers like a missing one.
        with ws_connect(base.replace("http://", "ws://") + "/ws/v1/",
                        additional_headers={"Cookie": cookie, "Origin": base}, open_timeout=10) as live:  # fmt: skip
            assert json.loads(live.recv(timeout=10))["type"] == "hello"
            live.send(json.dumps({"op": "subscribe", "id": 1, "stream": "tenants/no-such-tenant/activity"}))
            assert json.loads(live.recv(timeout=10))["code"] == "not_found"
            live.send(json.dumps({"op": "subscribe", "id": 2, "stream": "tenants/st-marys/activity"}))
            ack = json.loads(live.recv(timeout=10))
            assert ack["type"] == "subscribed", ack
            made = owner.post("/api/v1/tenants/st-marys/datasets/", json={"name": "e2e live feed"},
                              headers={"X-CSRFToken": owner.cookies["csrftoken"], "Referer": base + "/"})  # fmt: skip
            assert made.status_code == 201, made.text
            got: list[dict[str, Any]] = []
            deadline = time.monotonic() + 10
            while not any(m["payload"]["action"] == "dataset.created" for m in got) and time.monotonic() < deadline:
                msg = json.loads(live.recv(timeout=max(0.1, deadline - time.monotonic())))
                assert msg["type"] == "activity.event" and msg["seq"] > ack["seq"], msg
                got.append(msg)
            assert got and got[0]["prev"] == ack["seq"], got  # prev starts where the client stands
            assert all(b["prev"] == a["seq"] for a, b in itertools.pairwise(got)), got
            assert any(m["payload"]["action"] == "dataset.created" for m in got), got

        # An integrator's client streams a job with the key alone (no cookie, no Origin) through the
        # real router and uvicorn, and the key's revocation closes the open socket with 4403.
        created_key = r.json()
        csrf = owner.cookies["csrftoken"]
        hdr = {"X-CSRFToken": csrf, "Referer": base + "/"}
        notes = owner.get("/api/v1/tenants/st-marys/datasets/", params={"q": "Discharge"}).json()["results"]
        deadline = time.monotonic() + 120  # the seeded notes may still be de-identified by the worker
        while True:
            versions = owner.get(f"/api/v1/tenants/st-marys/datasets/{notes[0]['id']}/versions/").json()["results"]
            deid = next((x for x in versions if x["kind"] == "deidentified" and x["status"] == "ready"), None)
            if deid is not None or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert deid is not None, versions
        spec = {"model": {"name": "text_bag", "params": {"dim": 8}}, "epochs": 1}
        job = owner.post("/api/v1/tenants/st-marys/jobs/", headers=hdr,
                         json={"name": "e2e key stream", "dataset_version": deid["id"], "spec": spec})  # fmt: skip
        assert job.status_code == 201, job.text
        job_url = base.replace("http://", "ws://") + f"/ws/v1/tenants/st-marys/jobs/{job.json()['id']}/"
        with ws_connect(job_url, additional_headers={"Authorization": f"Bearer {created_key['key']}"},
                        open_timeout=10) as ws:  # fmt: skip
            gone = owner.delete(f"/api/v1/tenants/st-marys/api-keys/{created_key['id']}/", headers=hdr)
            assert gone.status_code in (200, 204), gone.text
            started = time.monotonic()
            closed = _until_closed(ws, timeout=5)
            assert closed.rcvd is not None and closed.rcvd.code == 4403, closed
            assert time.monotonic() - started <= 5

        if redis_url:  # a real Celery worker process picks up a task and records its outcome
            from celery import Celery

            tenant_id = r.json()["id"] and owner.get("/api/v1/tenants/st-marys/").json()["id"]
            Celery(broker=redis_url).send_task("audit.tenant_verify", kwargs={"tenant_id": tenant_id}, queue="default")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                ev = auditor.get("/api/v1/tenants/st-marys/audit-events/", params={"action": "audit.verified"})
                if ev.status_code == 200 and ev.json()["results"]:
                    assert ev.json()["results"][0]["outcome"] == "success"
                    assert ev.json()["results"][0]["actor_type"] == "system"
                    break
                time.sleep(1)
            else:
                pytest.fail("the Celery worker did not run audit.tenant_verify within 60 s")

            # A dataset larger than the inline limit is processed by the real worker (202 → ready),
            # and the seeded notes dataset previews de-identified.
            csrf = owner.cookies["csrftoken"]
            hdr = {"X-CSRFToken": csrf, "Referer": base + "/"}
            ds = owner.post("/api/v1/tenants/st-marys/datasets/", json={"name": "e2e upload"}, headers=hdr)
            assert ds.status_code == 201, ds.text
            rows = "\n".join(f"{i},{i % 7},{i % 2}" for i in range(3000))
            up = owner.post(
                f"/api/v1/tenants/st-marys/datasets/{ds.json()['id']}/versions/",
                files={"file": ("e2e.csv", f"a,b,label\n{rows}\n".encode(), "text/csv")},
                data={"label": "label"},
                headers=hdr,
            )
            assert up.status_code == 202, up.text
            url = f"/api/v1/tenants/st-marys/datasets/{ds.json()['id']}/versions/{up.json()['id']}/"
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                v = owner.get(url).json()
                if v["status"] != "processing":
                    break
                time.sleep(0.5)
            assert v["status"] == "ready" and v["rows"] == 3000, v
            notes = owner.get("/api/v1/tenants/st-marys/datasets/", params={"q": "Discharge"}).json()["results"]
            assert notes, "the demo notes dataset is seeded"
            versions = owner.get(f"/api/v1/tenants/st-marys/datasets/{notes[0]['id']}/versions/").json()["results"]
            deid = next(x for x in versions if x["kind"] == "deidentified")
            prev = owner.get(f"/api/v1/tenants/st-marys/datasets/{notes[0]['id']}/versions/{deid['id']}/preview/")
            assert prev.status_code == 200 and "@mail.example" not in prev.text, prev.text[:500]


def _run_twice(env: dict[str, str], state: Path, tmp_path: Path, redis_url: str | None) -> None:
    log = tmp_path / "run.log"
    for attempt in (1, 2):
        port = _free_port()
        proc = _start(env, port, log)
        try:
            _wait_ready(f"http://127.0.0.1:{port}", proc, log)
            if attempt == 1:
                _exercise(f"http://127.0.0.1:{port}", state, redis_url)
                first_key = json.loads((state / "demo-credentials.json").read_text())["integrator_api_key"]
            else:
                creds = json.loads((state / "demo-credentials.json").read_text())
                assert creds["integrator_api_key"] == first_key  # seed is idempotent; data kept
                r = httpx.get(
                    f"http://127.0.0.1:{port}/api/v1/tenants/",
                    headers={"Authorization": f"Bearer {first_key}"},
                    timeout=10,
                )
                assert r.status_code == 200
        finally:
            survivors = _stop(proc) if proc.poll() is None else []
        assert proc.returncode in (0, 130), log.read_text()[-3000:]
        assert survivors == [], f"processes left running after Ctrl-C: {survivors}"


@pytest.mark.slow
def test_embedded_mode(tmp_path: Path) -> None:
    state = tmp_path / "state"
    redis_port = _free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in {
            "DATABASE_URL",
            "DATABASE_OWNER_URL",
            "COHORT_DB_ADMIN_URL",
            "REDIS_URL",
            "CELERY_BROKER_URL",
            "DJANGO_SETTINGS_MODULE",
            "DJANGO_SECRET_KEY",
            "COHORT_API_KEY_PEPPER",
            "COHORT_AUDIT_SIGNING_KEY",
            "COHORT_EMBEDDED_POSTGRES",
            "COHORT_EMBEDDED_REDIS",
            *TEST_STATE_VARS,
        }
    }
    env.update({"COHORT_STATE_DIR": str(state), "COHORT_EMBEDDED_REDIS_PORT": str(redis_port)})
    _run_twice(env, state, tmp_path, f"redis://127.0.0.1:{redis_port}/0")
    assert (state / "pgdata" / "PG_VERSION").exists()


def test_external_servers(tmp_path: Path) -> None:
    admin = os.environ.get("COHORT_DB_ADMIN_URL")
    redis_url = os.environ.get("REDIS_URL")
    if not admin or not redis_url or os.environ.get("COHORT_EMBEDDED_POSTGRES"):
        pytest.skip("external servers not configured for this run")
    state = tmp_path / "state"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_OWNER_URL", "DJANGO_SETTINGS_MODULE", "COHORT_DB_ADMIN_URL", *TEST_STATE_VARS}
    }
    from psycopg import connect, sql

    with connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier("cohort_e2e")))
    env.update({"DATABASE_URL": admin, "COHORT_DB_NAME": "cohort_e2e", "COHORT_STATE_DIR": str(state)})
    _run_twice(env, state, tmp_path, redis_url)


def _until_closed(ws: Any, timeout: float) -> ConnectionClosed:
    """Read (replayed events may come first) until the server closes the socket."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            ws.recv(timeout=max(0.01, deadline - time.monotonic()))
        except ConnectionClosed as closed:
            return closed
