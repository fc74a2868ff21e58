"""The analysts' web app end to end in real headless Chromium (Debian's ``/usr/bin/chromium``,
driven by Playwright with ``executable_path``; never a downloaded browser), against the real stack
``make run`` starts (scripts/cohort.py run: gunicorn + uvicorn behind the router, a real Celery
worker, real PostgreSQL and Redis):

the owner creates a dataset, uploads a CSV (progress bar), sees its validation and PII reports,
applies a de-identification policy, sees the privacy budget and grants it, starts a job from the
model registry's form and downloads its model's weights, reads and verifies the audit log, and creates (shown once) and revokes an API key; sign in as the demo analyst → the federations list → the demo federation → start it → the per-site
states and the round timeline update live over the websocket (the socket is cut mid-run and
refused for a while; on resume every event the REST list shows arrives exactly once) → the run
completes with global and per-site curves, and its model is in the registry; then the seeded
training job's page (curves, log). A second browser
context, signed in to another tenant, sees none of it: the same URL is a clear "Not found" page.
Screenshots of the pages land in ``reports/screenshots/`` (``docs/screenshots/`` keeps a copy for
the README).

Without Chromium the test is skipped, unless ``COHORT_REQUIRE_BROWSER=1`` (``.ci/run`` sets it
after installing Debian's chromium), which makes a missing browser a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_smoke import TEST_STATE_VARS, _free_port, _stop, _wait_ready

pytestmark = [pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("COHORT_CHROMIUM", "/usr/bin/chromium")
SHOTS = ROOT / "reports" / "screenshots"
# The probe's flags: without the background-networking ones Chromium dials out at start and this
# machine's closed network refuses it, many times over.
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]  # fmt: skip


def _browser_or_skip() -> None:
    if not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None:
        if os.environ.get("COHORT_REQUIRE_BROWSER") == "1":
            pytest.fail(f"COHORT_REQUIRE_BROWSER=1 but there is no Chromium at {CHROMIUM}")
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run does)")


def _server_env(tmp_path: Path) -> dict[str, str]:
    """The launcher's environment: the machine's servers when configured (a fresh database), else
    embedded ones, as ``make run`` picks."""
    drop = {"DATABASE_OWNER_URL", "DJANGO_SETTINGS_MODULE", "COHORT_DB_ADMIN_URL", *TEST_STATE_VARS}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["COHORT_STATE_DIR"] = str(tmp_path / "state")
    admin = os.environ.get("COHORT_DB_ADMIN_URL")
    if admin and os.environ.get("REDIS_URL") and not os.environ.get("COHORT_EMBEDDED_POSTGRES"):
        from psycopg import connect, sql

        with connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier("cohort_web_e2e")))
        env.update({"DATABASE_URL": admin, "COHORT_DB_NAME": "cohort_web_e2e"})
    else:
        for k in ("DATABASE_URL", "COHORT_DB_ADMIN_URL", "REDIS_URL", "CELERY_BROKER_URL", "DJANGO_SECRET_KEY",
                  "COHORT_API_KEY_PEPPER", "COHORT_AUDIT_SIGNING_KEY", "COHORT_EMBEDDED_POSTGRES",
                  "COHORT_EMBEDDED_REDIS"):  # fmt: skip
            env.pop(k, None)
        env["COHORT_EMBEDDED_REDIS_PORT"] = str(_free_port())
    return env


# Every form control must have an accessible name (a <label for>, aria-label or aria-labelledby),
# and the page must not scroll sideways (tables scroll inside their own box at tablet widths).
_UNLABELLED = """() => [...document.querySelectorAll('input, select, textarea, button')]
  .filter((el) => el.type !== 'hidden' && !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
    && !el.getAttribute('aria-labelledby') && !(el.tagName === 'BUTTON' && el.textContent.trim()))
  .map((el) => el.outerHTML.slice(0, 120))"""
_OVERFLOW = "() => document.documentElement.scrollWidth - window.innerWidth"
# A new API key through the API, as the signed-in user (the CSRF cookie the app uses).
_NEW_KEY = """async (slug) => {
  const token = document.cookie.split("; ").find((c) => c.startsWith("csrftoken=")).split("=")[1];
  const r = await fetch(`/api/v1/tenants/${slug}/api-keys/`, { method: "POST", body: JSON.stringify({ name: "live check", scopes: ["read"] }),
    headers: { "Content-Type": "application/json", "X-CSRFToken": token } });
  return r.status; }"""
# Every event seq the REST list gives this user, following the cursor pages.
_REST_EVENTS = """async (path) => {
  const seqs = []; let next = path + "?page_size=100";
  while (next) { const r = await (await fetch(next)).json(); seqs.push(...r.results.map((e) => [e.seq, e.created_at])); next = r.next; }
  return seqs; }"""


def _accessible(page: Any, where: str) -> None:
    unlabelled = page.evaluate(_UNLABELLED)
    assert not unlabelled, f"{where}: controls without an accessible name: {unlabelled}"
    assert page.evaluate(_OVERFLOW) <= 1, f"{where}: the page scrolls sideways"


def _sign_in(page: Any, base: str, email: str, password: str) -> None:
    page.goto(f"{base}/app/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_label("Organisation").wait_for()


def test_an_analyst_watches_the_demo_federation_train_live(tmp_path: Path) -> None:
    _browser_or_skip()
    from playwright.sync_api import expect, sync_playwright

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    proc = subprocess.Popen([sys.executable, "scripts/cohort.py", "run", "--port", str(port)], cwd=ROOT,
                            env=_server_env(tmp_path), stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        _wait_ready(base, proc, log)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            analyst = browser.new_context(viewport={"width": 1280, "height": 900})
            page = analyst.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))

            # A wrong password: the server's message, on the page.
            page.goto(f"{base}/app/")
            page.get_by_label("Email").fill("analyst@st-marys.example")
            page.get_by_label("Password").fill("wrong")
            page.get_by_role("button", name="Sign in").click()
            expect(page.locator(".error")).to_be_visible(timeout=10_000)
            page.screenshot(path=str(SHOTS / "signin.png"))

            # The owner: a new dataset, a CSV uploaded with a progress bar, its reports, a grant.
            owner = browser.new_context(viewport={"width": 1280, "height": 900})
            opage = owner.new_page()
            opage.on("pageerror", lambda e: errors.append(str(e)))
            _sign_in(opage, base, "owner@st-marys.example", "cohort-demo-owner")
            opage.get_by_role("link", name="Datasets").click()
            opage.get_by_label("New dataset").fill("e2e admissions")
            opage.get_by_role("button", name="Create").click()
            expect(opage.get_by_role("heading", name="e2e admissions")).to_be_visible(timeout=10_000)
            csv = tmp_path / "admissions.csv"
            rows = ["age,stay_days,contact,readmitted"] + [
                f"{30 + i % 50},{1 + i % 9},patient{i}@example.org,{i % 2}" for i in range(400)
            ]
            csv.write_text("\n".join(rows) + "\n")
            opage.get_by_label("File (CSV, TSV, Parquet, JSON Lines, or a zip of images)").set_input_files(str(csv))
            opage.get_by_label("Label column (optional)").fill("readmitted")
            opage.get_by_role("button", name="Upload").click()
            versions = opage.get_by_test_id("versions")
            expect(versions.locator("tr", has_text="v1")).to_contain_text("ready", timeout=60_000)
            expect(opage.get_by_test_id("validation-summary")).to_contain_text("400 rows · 4 columns", timeout=10_000)
            expect(opage.locator("section.reports tr", has_text="contact")).to_contain_text("email", timeout=10_000)
            opage.get_by_label("Share with (organisation slug)").fill("northbank")
            opage.get_by_role("button", name="Grant").click()
            expect(opage.get_by_test_id("grants")).to_contain_text("northbank", timeout=10_000)
            # The policy editor starts from the scan's proposal; applying it makes the de-identified v2.
            policy = opage.get_by_test_id("policy")
            expect(policy).to_contain_text("contact", timeout=10_000)
            _accessible(opage, "dataset")
            opage.get_by_label("Action for contact").select_option("drop")
            opage.get_by_label("k-anonymity over the quasi-identifiers (empty: none)").fill("1")
            opage.get_by_role("button", name="Apply policy").click()
            expect(opage.locator("form.policy .field-error").first).to_be_visible()  # k = 1: refused on the client
            opage.get_by_label("k-anonymity over the quasi-identifiers (empty: none)").fill("")
            opage.get_by_role("button", name="Apply policy").click()
            expect(versions.locator("tr", has_text="v2")).to_contain_text("ready", timeout=60_000)
            expect(versions.locator("tr", has_text="v2")).to_contain_text("deidentified")
            expect(opage.get_by_test_id("budget-summary")).to_contain_text("reserved of", timeout=10_000)
            opage.screenshot(path=str(SHOTS / "dataset.png"), full_page=True)
            # A bad grant: the server's field error, shown on the form.
            opage.get_by_label("Share with (organisation slug)").fill("no-such-org")
            opage.get_by_role("button", name="Grant").click()
            expect(opage.locator("form.inline .field-error, form.inline .error").first).to_be_visible(timeout=10_000)
            # A training job from the model registry on the de-identified version, watched to the end,
            # then its model in the registry with lineage and downloads.
            opage.get_by_role("link", name="Jobs").click()
            opage.get_by_text("New training job", exact=True).click()  # the form folds away once jobs exist
            opage.get_by_role("button", name="Start job").click()
            expect(opage.get_by_text("Name the job.")).to_be_visible(timeout=10_000)  # client validation first
            opage.get_by_label("Name", exact=True).fill("e2e readmission")
            opage.get_by_label("Dataset version").select_option(label="e2e admissions v2 (400 rows)")
            v2_id = opage.get_by_label("Dataset version").input_value()
            opage.get_by_label("Model (from the registry)").select_option("mlp")
            opage.get_by_label("hidden", exact=True).fill("16")
            opage.get_by_label("Epochs", exact=True).fill("3")
            _accessible(opage, "jobs")
            opage.screenshot(path=str(SHOTS / "job-create.png"), full_page=True)
            opage.get_by_role("button", name="Start job").click()
            expect(opage.get_by_role("heading", name="e2e readmission")).to_be_visible(timeout=10_000)
            expect(opage.get_by_test_id("job-status")).to_have_text("succeeded", timeout=180_000)
            opage.get_by_role("link", name="Models").click()
            opage.get_by_role("link", name="e2e readmission").click()
            expect(opage.get_by_test_id("lineage")).to_contain_text("Training job", timeout=10_000)
            expect(opage.get_by_test_id("lineage-datasets").locator("tbody tr")).to_have_count(1)
            expect(opage.get_by_test_id("lineage-datasets")).to_contain_text(f"#{v2_id}")  # the version it trained on
            expect(opage.get_by_test_id("download-weights")).to_be_visible()
            with opage.expect_download() as dl:
                opage.get_by_test_id("download-weights").click()
            assert dl.value.suggested_filename.endswith(".safetensors")
            assert Path(dl.value.path()).read_bytes()[8:9] == b"{"  # safetensors: a u64 header length, then JSON
            _accessible(opage, "model")
            opage.screenshot(path=str(SHOTS / "model.png"), full_page=True)
            # The audit log (owners, admins, auditors): what was just done, and the chain verified.
            opage.get_by_role("link", name="Audit").click()
            events = opage.get_by_test_id("audit-events")
            expect(events).to_contain_text("grant.created", timeout=10_000)
            expect(events).to_contain_text("dataset.version_uploaded")
            expect(events).to_contain_text("model.downloaded")
            opage.get_by_role("button", name="Verify the hash chain").click()
            expect(opage.get_by_test_id("verify-result")).to_contain_text("Chain verified", timeout=30_000)
            opage.screenshot(path=str(SHOTS / "audit.png"), full_page=True)
            # Settings: the members and their roles; an API key shown once, then revoked.
            opage.get_by_role("link", name="Settings").click()
            expect(opage.get_by_test_id("members")).to_contain_text("analyst@st-marys.example", timeout=10_000)
            opage.get_by_label("New key").fill("e2e pipeline")
            opage.get_by_role("button", name="Create key").click()
            expect(opage.get_by_test_id("new-key")).to_contain_text("coh_", timeout=10_000)
            opage.screenshot(path=str(SHOTS / "settings.png"), full_page=True)
            keys = opage.get_by_test_id("api-keys")
            expect(keys.locator("tr", has_text="e2e pipeline")).to_contain_text("active")
            opage.get_by_role("button", name="Revoke e2e pipeline").click()
            expect(keys.locator("tr", has_text="e2e pipeline")).to_contain_text("revoked", timeout=10_000)
            owner.close()

            # The analyst's socket goes through a route the test can cut: mid-run it is closed and
            # refused for a while, so events happen while the browser is offline.
            sockets: list[Any] = []
            outage = {"until": 0.0}

            def on_socket(ws: Any) -> None:
                if time.monotonic() < outage["until"]:
                    ws.close(code=1012, reason="test: server unreachable")
                    return
                sockets.append((ws, ws.connect_to_server()))

            page.route_web_socket(re.compile(r".*/ws/v1/.*"), on_socket)
            _sign_in(page, base, "analyst@st-marys.example", "cohort-demo-analyst")
            expect(page.get_by_role("heading", name="Federations")).to_be_visible(timeout=10_000)
            expect(page.get_by_role("link", name="Audit")).to_have_count(0)  # an analyst reads no audit log
            link = page.get_by_role("link", name="demo: breast cancer across three hospitals")
            expect(link).to_be_visible()
            page.screenshot(path=str(SHOTS / "federations.png"))
            link.click()
            expect(page.get_by_test_id("fed-status")).to_have_text("draft", timeout=10_000)
            expect(page.get_by_test_id("live-status")).to_have_text("live", timeout=10_000)
            url = page.url

            # Another tenant's owner watches its own live audit log for the whole run.
            partner = browser.new_context(viewport={"width": 900, "height": 800})
            other = partner.new_page()
            other.on("pageerror", lambda e: errors.append(str(e)))
            _sign_in(other, base, "owner@northbank.example", "cohort-demo-owner")
            other.get_by_role("link", name="Audit").click()
            expect(other.get_by_test_id("audit-events")).to_be_visible(timeout=10_000)
            expect(other.get_by_test_id("live-status")).to_have_text("live", timeout=10_000)
            partner_rows = other.get_by_test_id("audit-events").locator("tbody tr").count()

            started = time.monotonic()
            page.get_by_role("button", name="Start federation").click()
            expect(page.get_by_test_id("fed-status")).to_have_text("running", timeout=15_000)
            # Live per-site states: every site trains and submits (pushed over the websocket).
            sites = page.get_by_test_id("sites")
            expect(sites.locator(".badge", has_text="submitted").first).to_be_visible(timeout=60_000)
            client_side, server_side = sockets[-1]
            outage["until"] = time.monotonic() + 1.5
            cut_at = time.time()
            client_side.close(code=1012, reason="test: socket lost")
            server_side.close()
            expect(page.get_by_test_id("live-status")).to_have_text("reconnecting", timeout=5_000)
            expect(page.get_by_test_id("live-status")).to_have_text("live", timeout=30_000)
            back_at = time.time()
            reconnects = len(sockets) - 1
            for label in ("site-1", "site-2", "site-3"):
                expect(sites.locator(f"tr[data-site='{label}'] .badge")).to_have_text("submitted", timeout=60_000)
            expect(page.get_by_test_id("rounds")).to_contain_text("Round 1 · train · closed", timeout=60_000)
            page.screenshot(path=str(SHOTS / "federation-live.png"), full_page=True)
            expect(page.get_by_test_id("fed-status")).to_have_text("completed", timeout=180_000)
            took = time.monotonic() - started
            expect(page.locator("figure.chart canvas").first).to_be_visible()
            expect(page.locator("figure.chart canvas")).to_have_count(2)  # global and per-site curves
            # Across the lost socket, every event the REST list shows this user arrived exactly once.
            fed_id = url.rstrip("/").rsplit("/", 1)[1]
            rest = page.evaluate(_REST_EVENTS, f"/api/v1/tenants/st-marys/federations/{fed_id}/events/")
            rest_events = [seq for seq, _ in rest]
            offline = [seq for seq, at in rest if cut_at < datetime.fromisoformat(at).timestamp() < back_at]
            assert offline, "events happened while the socket was down (replayed on resume)"
            expect(page.locator("details summary", has_text="Events (")).to_have_text(
                f"Events ({len(rest_events)})", timeout=10_000
            )
            shown = page.locator("ol.events li").all_text_contents()  # in a closed <details>
            assert [int(t.split()[0][1:]) for t in shown] == rest_events[-50:], "the last 50 events, in order"
            assert reconnects >= 1, "the socket was cut and came back"
            page.get_by_label("Metric", exact=True).select_option(index=1)  # a held-out metric per site
            _accessible(page, "federation")
            page.screenshot(path=str(SHOTS / "federation-completed.png"), full_page=True)
            # At tablet width the page reflows; nothing scrolls sideways.
            page.set_viewport_size({"width": 820, "height": 1180})
            _accessible(page, "federation (tablet)")
            page.screenshot(path=str(SHOTS / "federation-tablet.png"), full_page=True)
            page.set_viewport_size({"width": 1280, "height": 900})
            # Its final model in the coordinator's registry, with every site's dataset version.
            page.get_by_role("link", name="Models").click()
            page.get_by_role("link", name="demo: breast cancer across three hospitals").first.click()
            expect(page.get_by_test_id("lineage")).to_contain_text("Federation", timeout=10_000)
            expect(page.get_by_test_id("lineage-datasets").locator("tbody tr")).to_have_count(3)

            # The seeded demo training job (the worker trains it): its curves and log.
            page.get_by_role("link", name="Jobs").click()
            expect(page.get_by_role("heading", name="Training jobs")).to_be_visible(timeout=10_000)
            page.get_by_role("link", name="demo: breast cancer MLP").click()
            expect(page.get_by_test_id("job-status")).to_have_text("succeeded", timeout=180_000)
            expect(page.locator("figure.chart canvas").first).to_be_visible()
            expect(page.get_by_test_id("job-log")).not_to_be_empty()
            page.screenshot(path=str(SHOTS / "job.png"), full_page=True)
            assert not errors, errors

            # The partner's live log got nothing of the run (its own rows only, none a federation's),
            # and the same URL, and under its own slug, are a clear "Not found".
            log_text = other.get_by_test_id("audit-events").inner_text()
            assert "federation." not in log_text and "breast cancer" not in log_text, log_text[:500]
            assert other.get_by_test_id("audit-events").locator("tbody tr").count() == partner_rows
            # (The log is live: the partner's own new key shows up in it without a reload.)
            assert other.evaluate(_NEW_KEY, "northbank") == 201
            expect(other.get_by_test_id("audit-events")).to_contain_text("api_key.created", timeout=10_000)
            other.goto(url)
            expect(other.get_by_role("heading", name="Not found")).to_be_visible(timeout=10_000)
            other.goto(url.replace("/t/st-marys/", "/t/northbank/"))
            expect(other.get_by_role("heading", name="Not found")).to_be_visible(timeout=10_000)
            expect(other.locator("body")).not_to_contain_text("breast cancer across")
            other.screenshot(path=str(SHOTS / "not-found.png"))
            browser.close()
        print(
            f"web e2e: start → completed in {took:.1f} s; socket cut for {back_at - cut_at:.1f} s, "
            f"{len(offline)} events written meanwhile, {reconnects} reconnect(s), none lost or doubled"
        )
    finally:
        _stop(proc)
