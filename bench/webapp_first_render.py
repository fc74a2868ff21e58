"""webapp_first_render: time to first render of the federation page in real headless Chromium
(issue 12), against the sign-in page of the same app under the same browser and server.

* **stack**: what ``make run`` serves (``scripts/cohort.py run``: the router in front of gunicorn,
  uvicorn for the websocket, a Celery worker; whitenoise serving the built app's compressed assets)
  on a fresh database of its own (``cohort_bench_web``), seeded with the demo. Full run: the demo
  analyst starts the demo federation (3 hospitals, 5 rounds) and the benchmark waits until it is
  completed, so the page has several closed rounds of figures to draw. ``--quick``: the draft
  federation as seeded (no rounds), a smoke of the same code.
* **ours**: ``/app/t/st-marys/federations/<id>`` signed in as the analyst (the session cookie),
  from the navigation's start (``performance.timeOrigin``) to the frame in which the per-site table
  has every site's row and both charts (global and per-site metrics) are laid out with data (no
  "No rounds have closed yet" note; in ``--quick``, with the note): the HTML, the script and
  stylesheet, the app's session check, the federation, sites, rounds and metrics reads, React's
  render and uPlot's canvases. Polled each animation frame in the page, so the time is the page's
  own clock, not the driver's.
* **baseline**: ``/app/`` signed out, to the frame in which the sign-in form's password field is
  laid out: the same HTML, script and stylesheet, the same session check, the same server and
  browser, none of the federation page's reads or drawing. The ratio is what the federation page
  adds over the app's own start.

Cold: a new browser context per load (empty cache, new connections). Warm: one context, loaded
once untimed, then again and again (the hashed assets cached; ``index.html`` is ``no-cache``).
Medians; loads alternate between the two pages.

Without Chromium (``/usr/bin/chromium``, or ``COHORT_CHROMIUM``) or Playwright the benchmark says
so and writes a result marked skipped. Playwright always launches that executable; it never
downloads a browser.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, log, write_result

NAME = "webapp_first_render"
CHROMIUM = os.environ.get("COHORT_CHROMIUM", "/usr/bin/chromium")
# Chromium's flags as the browser test has them: without the background-networking ones it dials out
# at start, and a closed network refuses it many times over.
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]  # fmt: skip
LOADS, QUICK_LOADS = 7, 2  # of each page, cold and warm
TARGET_COLD_MS = 1000.0
DB_NAME = "cohort_bench_web"
SLUG = "st-marys"
ANALYST = ("analyst@st-marys.example", "cohort-demo-analyst")
DEMO_FEDERATION = "demo: breast cancer across three hospitals"
SITES = 3
VIEWPORT = {"width": 1280, "height": 900}
# The launcher's per-run state variables that a parent's test settings may have set (tests/e2e).
STATE_VARS = ("COHORT_KEY_DIR", "COHORT_OBJECT_DIR", "COHORT_TMP_DIR", "COHORT_CHECKPOINT_DIR", "COHORT_KEK")

# performance.now() of the first animation frame in which the page is drawn, else false.
FEDERATION_READY = """(args) => {
  const [sites, withData] = args;
  const rows = document.querySelectorAll('[data-testid="sites"] tbody tr');
  const figures = [...document.querySelectorAll("figure.chart")];
  const drawn = figures.length >= 2 && figures.every((f) => f.querySelector("canvas")
    && f.getBoundingClientRect().height > 0 && (!withData || !f.querySelector("p.empty")));
  return rows.length >= sites && drawn ? performance.now() : false;
}"""
SIGN_IN_READY = """() => {
  const field = document.querySelector('input[type="password"]');
  return field && field.getBoundingClientRect().height > 0 ? performance.now() : false;
}"""
# From the signed-in page, with the CSRF cookie the app uses.
API = """async ([method, path]) => {
  const token = (document.cookie.split("; ").find((c) => c.startsWith("csrftoken=")) || "=").split("=")[1];
  const r = await fetch(path, { method, headers: { "Content-Type": "application/json", "X-CSRFToken": token },
                                body: method === "POST" ? "{}" : undefined });
  return [r.status, await r.json().catch(() => null)]; }"""


def unavailable() -> str | None:
    """Why the benchmark cannot run here (None: it can)."""
    if not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None:
        return f"no Chromium at {CHROMIUM} (apt-get install chromium; or set COHORT_CHROMIUM)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright (python) is not installed"
    if not os.environ.get("COHORT_DB_ADMIN_URL") or not os.environ.get("REDIS_URL"):
        return "needs the launcher's COHORT_DB_ADMIN_URL and REDIS_URL (run through scripts/cohort.py exec)"
    return None


# --- the stack -------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _drop_database() -> None:
    from psycopg import connect, sql

    with connect(os.environ["COHORT_DB_ADMIN_URL"], autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB_NAME)))


def _stack_env(state: Path) -> dict[str, str]:
    """The launcher's environment for ``run``: the machine's PostgreSQL (a fresh database of its own)
    and Redis, a state folder of its own, none of the runner's scratch-database settings."""
    drop = {"DATABASE_OWNER_URL", "DATABASE_PLATFORM_URL", "DJANGO_SETTINGS_MODULE", "COHORT_DB_ADMIN_URL",
            *STATE_VARS}  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update({"DATABASE_URL": os.environ["COHORT_DB_ADMIN_URL"], "COHORT_DB_NAME": DB_NAME,
                "COHORT_STATE_DIR": str(state)})  # fmt: skip
    return env


class Stack:
    """``scripts/cohort.py run`` on a free port; stopped with its process group (Ctrl-C, then kill)."""

    def __init__(self, state: Path) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = state / "server.log"
        state.mkdir(parents=True, exist_ok=True)
        _drop_database()
        cmd = [sys.executable, "scripts/cohort.py", "run", "--port", str(self.port)]
        log(f"webapp_first_render: starting the stack (scripts/cohort.py run) on {self.base}")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=_stack_env(state), stdout=self.log.open("ab"),
                                     stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip

    def wait_ready(self, timeout: float = 300) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the stack exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise RuntimeError(f"the stack was not ready after {timeout:.0f} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # its own session: this group and nothing else
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        try:
            _drop_database()
        except Exception as exc:  # the figures are written already; say so, do not fail the run
            log(f"webapp_first_render: could not drop {DB_NAME}: {exc}")


# --- the browser -----------------------------------------------------------------------------------
def sign_in(page: Any, base: str) -> None:
    page.goto(f"{base}/app/")
    page.get_by_label("Email").fill(ANALYST[0])
    page.get_by_label("Password").fill(ANALYST[1])
    page.get_by_role("button", name="Sign in").click()
    page.get_by_label("Organisation").wait_for(timeout=30_000)


def api(page: Any, method: str, path: str) -> tuple[int, Any]:
    status, body = page.evaluate(API, [method, path])
    return int(status), body


def demo_federation(page: Any, *, run: bool, timeout: float = 300) -> tuple[int, int]:
    """The demo federation's id and its closed rounds; with ``run``, started and waited for."""
    status, body = api(page, "GET", f"/api/v1/tenants/{SLUG}/federations/?page_size=100")
    assert status == 200, body
    fed = next(f for f in body["results"] if f["name"] == DEMO_FEDERATION)
    path = f"/api/v1/tenants/{SLUG}/federations/{fed['id']}/"
    if run:
        log("webapp_first_render: running the demo federation (5 rounds) to completion")
        status, body = api(page, "POST", path + "start/")
        assert status in (200, 202), (status, body)
        deadline = time.monotonic() + timeout
        while True:
            status, body = api(page, "GET", path)
            if body.get("status") == "completed":
                break
            if body.get("status") in ("failed", "cancelled") or time.monotonic() > deadline:
                raise RuntimeError(f"the demo federation did not complete: {body}")
            time.sleep(2)
    status, body = api(page, "GET", path + "rounds/")
    rounds = (body if isinstance(body, list) else body.get("results", [])) if status == 200 else []
    closed = sum(1 for r in rounds if r.get("status") == "closed" and r.get("kind") == "train")
    return int(fed["id"]), closed


def timed_load(page: Any, url: str, ready: str, arg: Any = None, timeout_ms: float = 60_000) -> float:
    """Milliseconds from the navigation's start to the first frame in which ``ready`` holds."""
    page.goto(url, wait_until="commit", timeout=timeout_ms)
    handle = page.wait_for_function(ready, arg=arg, polling="raf", timeout=timeout_ms)
    return float(handle.json_value())


def measure(browser: Any, base: str, cookies: list[dict[str, Any]], fed_id: int, *, loads: int,
            with_data: bool) -> dict[str, dict[str, list[float]]]:  # fmt: skip
    """Cold and warm loads of both pages, alternating; ms per load."""
    fed_url = f"{base}/app/t/{SLUG}/federations/{fed_id}"
    sign_url = f"{base}/app/"
    arg = [SITES, with_data]
    out: dict[str, dict[str, list[float]]] = {
        "federation": {"cold": [], "warm": []},
        "sign_in": {"cold": [], "warm": []},
    }

    def context(signed_in: bool) -> Any:
        ctx = browser.new_context(viewport=VIEWPORT)
        if signed_in:
            ctx.add_cookies(cookies)
        return ctx

    for i in range(loads):
        for name in ("federation", "sign_in") if i % 2 == 0 else ("sign_in", "federation"):
            ctx = context(name == "federation")
            page = ctx.new_page()
            if name == "federation":
                out[name]["cold"].append(timed_load(page, fed_url, FEDERATION_READY, arg))
            else:
                out[name]["cold"].append(timed_load(page, sign_url, SIGN_IN_READY))
            ctx.close()
    warm = {name: context(name == "federation") for name in ("federation", "sign_in")}
    pages = {name: ctx.new_page() for name, ctx in warm.items()}
    timed_load(pages["federation"], fed_url, FEDERATION_READY, arg)  # untimed: fills the cache
    timed_load(pages["sign_in"], sign_url, SIGN_IN_READY)
    for i in range(loads):
        for name in ("federation", "sign_in") if i % 2 == 0 else ("sign_in", "federation"):
            if name == "federation":
                out[name]["warm"].append(timed_load(pages[name], fed_url, FEDERATION_READY, arg))
            else:
                out[name]["warm"].append(timed_load(pages[name], sign_url, SIGN_IN_READY))
    for ctx in warm.values():
        ctx.close()
    return out


def _skip(ctx: Any, why: str, target: str) -> dict[str, Any]:
    log(f"webapp_first_render: skipped: {why}")
    return write_result(NAME, unit="ms (median, cold)", value=0.0, baseline="(not measured)", baseline_value=0.0,
                        ratio=0.0, target=target, command=ctx.opts.command, met=False, skipped=why,
                        quick=ctx.opts.quick)  # fmt: skip


def run(ctx: Any) -> dict[str, Any]:
    quick = ctx.opts.quick
    loads = QUICK_LOADS if quick else LOADS
    target = f"cold median <= {TARGET_COLD_MS:.0f} ms (completed federation, signed in)"
    why = unavailable()
    if why is not None:
        return _skip(ctx, why, target)
    from playwright.sync_api import sync_playwright

    state = Path(tempfile.mkdtemp(prefix="cohort-first-render-"))
    stack = Stack(state)
    try:
        stack.wait_ready()
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            try:
                setup = browser.new_context(viewport=VIEWPORT)
                page = setup.new_page()
                sign_in(page, stack.base)
                started = time.monotonic()
                fed_id, closed = demo_federation(page, run=not quick)
                run_s = time.monotonic() - started
                cookies = setup.cookies()
                setup.close()
                log(f"webapp_first_render: {loads} cold and {loads} warm loads of each page "
                    f"(federation {fed_id}, {closed} closed rounds)")  # fmt: skip
                times = measure(browser, stack.base, cookies, fed_id, loads=loads, with_data=not quick)
                version = browser.version
            finally:
                browser.close()
    finally:
        stack.stop()
        shutil.rmtree(state, ignore_errors=True)

    def med(name: str, kind: str) -> float:
        return float(statistics.median(times[name][kind]))

    value, base = med("federation", "cold"), med("sign_in", "cold")
    log(f"webapp_first_render: federation page cold {value:.0f} ms, warm {med('federation', 'warm'):.0f} ms; "
        f"sign-in page cold {base:.0f} ms, warm {med('sign_in', 'warm'):.0f} ms")  # fmt: skip
    return write_result(
        NAME,
        unit="ms (median, cold)",
        value=value,
        baseline="the same app's sign-in page (signed out: HTML, script, stylesheet, session check), same "
        "server and browser",
        baseline_value=base,
        ratio=value / base if base else float("nan"),
        target=target,
        command=ctx.opts.command,
        met=value <= TARGET_COLD_MS and not quick and closed >= 2,
        quick=quick,
        chromium=version,
        loads=loads,
        closed_rounds=closed,
        federation_run_s=round(run_s, 1),
        cold_ms=round(value, 1),
        warm_ms=round(med("federation", "warm"), 1),
        baseline_cold_ms=round(base, 1),
        baseline_warm_ms=round(med("sign_in", "warm"), 1),
        warm_ratio=round(med("federation", "warm") / med("sign_in", "warm"), 3) if med("sign_in", "warm") else None,
        times_ms={n: {k: [round(x, 1) for x in v] for k, v in d.items()} for n, d in times.items()},
    )
