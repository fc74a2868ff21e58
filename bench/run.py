"""Benchmark runner (`make bench`): scratch database, every benchmark, results JSON and docs/benchmarks.md."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.common import DOC_PATH, RESULTS_DIR, Options, log, machine, with_dbname

BENCHMARKS = (
    "api_list_rls",
    "api_list_servers",
    "audit_write_overhead",
    "audit_verify_rate",
    "dataset_ingest",
    "encryption_stage",
    "training_throughput",
    "checkpoint_overhead",
    "dp_sgd",
    "fl_aggregate",
    "fl_rounds",
    "ws_latency",
    "ws_throughput",
    "webapp_bundle",
    "webapp_first_render",
)
# Benchmarks of pure worker code: a run made of these alone needs no scratch database (nor Django).
PURE_BENCHMARKS = frozenset(
    {
        "dataset_ingest",
        "encryption_stage",
        "training_throughput",
        "checkpoint_overhead",
        "dp_sgd",
        "fl_aggregate",
        "webapp_bundle",
    }
)
WRAPPER = ".venv/bin/python scripts/cohort.py exec -- .venv/bin/python -m bench.run"
RUN_FILE = RESULTS_DIR / "run.json"


class Context:
    """What the benchmarks share: options, the seeded tenant, one lazily started server."""

    def __init__(self, opts: Options, admin_db_url: str | None) -> None:
        self.opts = opts
        self.admin_db_url = admin_db_url
        self._fixture: Any = None
        self._server: Any = None

    @property
    def fixture(self) -> Any:
        if self._fixture is None:
            from bench.fixtures import seed_tenant

            self._fixture = seed_tenant(members=50)
        return self._fixture

    def server(self) -> Any:
        if self._server is None:
            from bench.http import Server

            self.fixture  # noqa: B018 (seed before the server's workers read anything)
            self._server = Server(workers=self.opts.http_workers).__enter__()
        return self._server

    def close(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


def prepare_database(dbname: str, *, reuse: bool) -> str:
    """Create the scratch database (owned by the owner role) and point this process and its children
    at it. Returns a superuser URL for it. The dev database is never touched."""
    import psycopg
    from psycopg import sql

    from scripts.cohort import prepare_schema, with_credentials

    admin = os.environ.get("COHORT_DB_ADMIN_URL")
    if not admin:
        raise SystemExit(
            "bench: COHORT_DB_ADMIN_URL is not set. Run through `make bench` (scripts/cohort.py exec), with "
            "DATABASE_URL naming a superuser or unset (embedded PostgreSQL): the benchmarks need a scratch database."
        )
    app_url, owner_url = os.environ["DATABASE_URL"], os.environ["DATABASE_OWNER_URL"]
    owner_role = urlsplit(owner_url).username or "cohort_owner"
    parts = urlsplit(admin)
    admin_db_url = with_credentials(
        admin, user=parts.username or "postgres", password=parts.password or "", dbname=dbname
    )
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [dbname]).fetchone()
        if not (reuse and exists):
            log(f"creating scratch database {dbname}")
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {} ENCODING 'UTF8' TEMPLATE template0").format(
                    sql.Identifier(dbname), sql.Identifier(owner_role)
                )
            )
            prepare_schema(admin_db_url)
    os.environ["DATABASE_URL"] = with_dbname(app_url, dbname)
    os.environ["DATABASE_OWNER_URL"] = with_dbname(owner_url, dbname)
    if os.environ.get("DATABASE_PLATFORM_URL"):
        os.environ["DATABASE_PLATFORM_URL"] = with_dbname(os.environ["DATABASE_PLATFORM_URL"], dbname)
    return admin_db_url


def drop_database(dbname: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(os.environ["COHORT_DB_ADMIN_URL"], autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, Options]:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke sizes: 100k audit events, 500 requests, a 100 MiB CSV, 64 MiB encrypted",
    )
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, metavar="NAME", help=f"any of {BENCHMARKS}")
    parser.add_argument(
        "--reuse-db",
        action="store_true",
        help="reuse the scratch database (and its seeded events) from a --keep-db run",
    )
    parser.add_argument("--keep-db", action="store_true", help="do not drop the scratch database at the end")
    parser.add_argument("--db-name", default=os.environ.get("COHORT_BENCH_DB", "cohort_bench"))
    parser.add_argument(
        "--doc-only", action="store_true", help="only rewrite docs/benchmarks.md from bench/results/ (no database)"
    )
    parser.add_argument("--strict", action="store_true", help="exit with status 1 when a target is not met")
    args = parser.parse_args(argv)
    events_env = os.environ.get("COHORT_BENCH_AUDIT_EVENTS")
    opts = Options(
        quick=args.quick,
        command=" ".join([WRAPPER, *argv]),
        audit_events=int(events_env) if events_env else (100_000 if args.quick else 1_000_000),
        requests=500 if args.quick else 2_000,
        concurrency=8,
        write_iterations=500 if args.quick else 2_000,
    )
    return args, opts


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, opts = parse_args(argv)
    if args.doc_only:
        write_doc(json.loads(RUN_FILE.read_text()))
        return 0
    selected = list(args.only or BENCHMARKS)
    pure = all(name in PURE_BENCHMARKS for name in selected)
    admin_db_url: str | None = None
    if not pure:
        admin_db_url = prepare_database(args.db_name, reuse=args.reuse_db)
        os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"
        import django

        django.setup()
        from django.core.management import call_command
        from django.db import connections

        call_command("migrate", database="owner", interactive=False, verbosity=0)
        connections["owner"].close()
    else:
        log("pure benchmarks only: no scratch database")
    with warnings.catch_warnings():  # pure runs: Django is not set up, the server-version query may warn
        warnings.simplefilter("ignore", RuntimeWarning)
        facts = machine()
    log(f"{facts['cpu']} x{facts['nproc']}, load {facts['load_at_start']}; {'quick' if opts.quick else 'full'} run")
    ctx = Context(opts, admin_db_url)
    results: list[dict[str, Any]] = []
    started = time.perf_counter()
    try:
        for name in selected:
            module = importlib.import_module(f"bench.{name}")
            t0 = time.perf_counter()
            res = module.run(ctx)
            res["measured_at"] = facts["date"]
            (RESULTS_DIR / f"{name}.json").write_text(json.dumps(res, indent=2) + "\n")
            results.append(res)
            log(f"{name}: done in {time.perf_counter() - t0:.0f} s")
    finally:
        ctx.close()
        if not pure:
            connections.close_all()
            if not (args.keep_db or args.reuse_db):
                drop_database(args.db_name)
    print_table(results)
    run = {
        **facts,
        "command": opts.command,
        "kind": "quick run: smoke sizes, not the figures of record" if opts.quick else "full run",
        "benchmarks": ", ".join(selected),
        "elapsed_min": f"{(time.perf_counter() - started) / 60:.1f}",
    }
    RUN_FILE.write_text(json.dumps(run, indent=2) + "\n")
    write_doc(run)
    missed = [r["name"] for r in results if not r["target_met"]]
    if missed:
        log(f"target not met: {', '.join(missed)}")
    return 1 if (missed and args.strict) else 0


def _fmt(value: float, unit: str) -> str:
    if unit.startswith("ms"):
        return f"{value:.2f} ms"
    if unit == "MB/s" and value < 100:
        return f"{value:.1f} {unit}"
    return f"{value:,.0f} {unit}"


def _details(r: dict[str, Any]) -> str:
    try:
        return _details_of(r)
    except KeyError:  # a results file from an older version of this runner
        return "(older result format: rerun)"


def _details_of(r: dict[str, Any]) -> str:
    if r["name"] == "dp_sgd":
        return (
            f"MLP on breast cancer, {r['train_rows']} rows, {r['epochs']} epochs, batch 32, sigma "
            f"{r['noise_multiplier']}, clip {r['max_grad_norm']}; epsilon at delta 1e-5: engine "
            f"{r['epsilon_engine']} (q = 32/N), Opacus {r['epsilon_opacus']} (q = 1/len(loader)); engine val "
            f"accuracy {r['val_accuracy_engine']}; evaluation excluded; 1 thread; median of {r['runs']}"
        )
    if r["name"] == "fl_aggregate":
        x = r["extra_peak_updates"]

        def times(v: float | None) -> str:
            return "?" if v is None else f"{v:.2f}×"

        if r["flower_available"]:
            flower = (
                f"Flower {r['flower_version']} `aggregate` {r['flower_aggregate_s'] * 1000:.1f} ms (over ours in "
                f"memory ×{r['flower_ratio']:.2f}; over the in-memory read pass ×{r['flower_over_read_pass']:.1f}), "
                f"`aggregate_arrayrecords` {r['flower_arrayrecords_s'] * 1000:.1f} ms "
                f"(×{r['flower_arrayrecords_ratio']:.2f}), max |Flower − ours| {r['flower_max_abs_diff']:.1e}"
            )
        else:
            flower = f"Flower baseline unavailable ({r['flower_unavailable_reason']})"
        return (
            f"{r['sites']} × {r['elements']:,} float32 deltas ({r['update_mb']:,.0f} MB each), 1 thread; headline: "
            f"the storage path (safetensors files in the page cache, `load_weights`); in memory "
            f"{r['memory_ms']:.1f} ms vs read pass {r['memory_read_ms']:.1f} ms (×{r['memory_ratio']:.3f}); {flower}; "
            "extra peak RSS in updates: "
            f"FedAvg in memory {times(x['memory'])}, storage path {times(x['files'])} ({times(x['files_few'])} with 2 "
            f"sites; its read pass alone {times(x['read'])}), Flower `aggregate` "
            f"{times(r.get('flower_extra_peak_updates'))}; "
            f"max |error| vs float64 reference {r['max_abs_error_vs_reference']:.1e}; median of {r['runs']}"
        )
    if r["name"] == "ws_latency":
        return (
            f"{r['clients']} clients on /ws/v1/ (activity stream), {r['events']} events at 20/s: p50 {r['p50_ms']} ms, "
            f"p99 {r['p99_ms']} ms, max {r['max_ms']} ms, {r['delivered']}/{r['expected']} delivered; baseline "
            f"(Redis pub/sub + bare websockets) p50 {r['baseline_p50_ms']} ms, p99 {r['baseline_p99_ms']} ms; burst "
            f"of {r['burst_events']}: {r['burst_deliveries_per_s']:,.0f} deliveries/s "
            f"(baseline {r['baseline_burst_deliveries_per_s']:,.0f}/s)"
        )
    if r["name"] == "ws_throughput":
        alt = r.get("pubsub_layer")
        alt_text = (
            f"; channels_redis' pub/sub layer (not configured) {alt['events_per_s']:,.0f} events/s, p99 "
            f"{alt['p99_ms']:.0f} ms, {alt['lost']:,} lost"
            if alt
            else ""
        )
        return (
            f"{r['channels']} channels in {r['processes']} receiver processes, {r['events']:,} events sent back to "
            f"back through `{r['backend'].rsplit('.', 1)[-1]}`: {r['deliveries_per_s']:,.0f} deliveries/s, sent at "
            f"{r['send_events_per_s']:,.0f} events/s, {r['lost']:,} of {r['events'] * r['channels'] * r['rounds']:,} "
            f"deliveries lost, p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms; "
            f"baseline {r['baseline_deliveries_per_s']:,.0f} deliveries/s, p99 {r['baseline_p99_ms']:.0f} ms, "
            f"{r['baseline_lost']:,} lost{alt_text}; median of {r['rounds']} rounds in rotating order"
        )
    if r["name"] == "webapp_bundle":
        if r.get("skipped"):
            return f"skipped: {r['skipped']}"
        return (
            f"initial load ({', '.join(r['files'])}): {r['value']:.1f} kB gzipped (JS {r['initial_js_gzip_kb']:.1f}, "
            f"CSS {r['initial_css_gzip_kb']:.1f}), {r['initial_raw_kb']:.1f} kB raw; floor "
            f"{r['baseline_value']:.1f} kB gzipped, {r['baseline_raw_kb']:.1f} kB raw; the app's own code "
            f"{r['app_over_floor_gzip_kb']:+.1f} kB gzipped; loaded later {r['later_gzip_kb']:.1f} kB; "
            f"gzip level {r['gzip_level']}"
        )
    if r["name"] == "webapp_first_render":
        if r.get("skipped"):
            return f"skipped: {r['skipped']}"
        return (
            f"Chromium {r['chromium']} headless, {r['loads']} loads of each page: federation page (demo, "
            f"{r['closed_rounds']} closed rounds, 3 sites) cold {r['cold_ms']:.0f} ms, warm {r['warm_ms']:.0f} ms; "
            f"sign-in page cold {r['baseline_cold_ms']:.0f} ms, warm {r['baseline_warm_ms']:.0f} ms (warm ratio "
            f"{r['warm_ratio']:.2f}); medians, from the navigation's start to the frame with the sites' rows and "
            "both charts drawn"
        )
    if r["name"] == "fl_rounds":
        parts = []
        for ds in r["datasets"]:
            c = r["test_correct"][ds]
            figs = {k.rsplit("_" + ds, 1)[0].removeprefix("fl_rounds_"): v for k, v in r["figures"].items()
                    if k.endswith("_" + ds)}  # fmt: skip
            ratios = ", ".join(f"{k} ×{v['ratio']:.2f}" for k, v in figs.items())
            same = (r.get("test_correct_same_seeds") or {}).get(ds)
            parts.append(f"{ds}: ours = {r['ours'][ds]}, {ratios}; test correct of {r['test_rows'][ds]}"
                         + (" on the platform's seeds: " + ", ".join(f"{k} {v}" for k, v in same.items())
                            + " (on the bench's fixed seeds: " if same else ": ")
                         + ", ".join(f"{k} {v}" for k, v in c.items()) + (")" if same else ""))  # fmt: skip
        return f"{r['sites']} sites × {r['rounds']} rounds, FedAvg; " + "; ".join(parts)
    if r["name"] == "api_list_rls":
        return (
            f"one at a time: p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms (bare {r['baseline_p50_ms']:.1f} / "
            f"{r['baseline_p99_ms']:.1f}); under load ({r['concurrency']} conns, {r['server_workers']} workers, "
            f"{r['requests_per_endpoint']} req each): p50 {r['loaded_p50_ms']:.0f} ms, p99 {r['loaded_p99_ms']:.0f} ms "
            f"(bare {r['loaded_baseline_p50_ms']:.0f} / {r['loaded_baseline_p99_ms']:.0f}); "
            f"{r['sql_per_request']} vs {r['baseline_sql_per_request']} SQL statements per request; "
            f"median of per-round ratios {r['ratio_median_of_rounds']:.3f}"
        )
    if r["name"] == "api_list_servers":
        s = r["servers"]
        return "; ".join(
            f"{label}: {s[k]['rps']:,.0f} req/s ({s[k]['ratio_to_bare']:.2f} × bare {s[k]['bare_rps']:,.0f}), "
            f"p99 {s[k]['p99_ms']:.1f} ms one at a time (p50 {s[k]['p50_ms']:.1f})"
            + (f", ×{s[k]['speedup_median_of_rounds']:.2f} uvicorn (median of rounds)" if k != "uvicorn" else "")
            for k, label in (
                ("uvicorn", "uvicorn (before)"),
                ("gunicorn", "gunicorn direct"),
                ("router", "`make run` port (router → gunicorn)"),
            )
        ) + (
            f"; {r['concurrency']} conns, {r['server_workers']} workers each (gunicorn gthread × "
            f"{r['gunicorn_threads']} threads), {r['servers']['uvicorn']['requests']} req per endpoint and server "
            f"in {r['rounds']} rotating rounds"
        )
    if r["name"] == "audit_write_overhead":
        return (
            f"Δp95 {r['delta_p95_ms']:+.2f} ms, Δp50 {r['delta_p50_ms']:+.2f} ms in process "
            f"({r['iterations']} each); HTTP PATCH p95 {r['http_p95_ms']:.1f} vs "
            f"{r['http_baseline_p95_ms']:.1f} ms "
            f"(Δ {r['http_delta_p95_ms']:+.2f} ms, {r['http_requests']} each)"
        )
    if r["name"] == "audit_verify_rate":
        return (
            f"{r['events']:,} events in {r['verify_seconds']:.2f} s (stream only {r['stream_seconds']:.2f} s) "
            f"→ {r['seconds_per_million']:.2f} s per million; median of {r['runs']}"
        )
    if r["name"] == "dataset_ingest":
        return (
            f"{r['csv_mib']:,.0f} MiB CSV, {r['rows']:,} rows × {r['columns']} columns: ingest (validate, PII scan, "
            f"convert, encrypt, store) {r['ingest_mb_s']:.1f} MB/s ({r['ingest_ratio']:.3f} × pandas), "
            f"de-identify {r['deidentify_mb_s']:.1f} MB/s, end to end {r['end_to_end_mb_s']:.1f} MB/s; peak RSS "
            f"ingest {r['rss_ingest_big_mb']:.0f} MB vs {r['rss_ingest_small_mb']:.0f} MB at "
            f"{r['small_csv_mib']:,.0f} MiB (×{r['rss_ratio']:.2f}), de-identify {r['rss_deidentify_big_mb']:.0f} MB, "
            f"pandas {r['rss_pandas_big_mb']:,.0f} MB; one run each"
        )
    if r["name"] == "encryption_stage":
        return (
            f"{r['mib']} MiB in 1 MiB writes and frames; with the content SHA-256 the store step also keeps: "
            f"{r.get('with_content_sha256_mb_s', 0):,.0f} MB/s (ratio {r.get('with_content_sha256_ratio', 0):.2f}); "
            f"decrypt {r['decrypt_mb_s']:,.0f} MB/s; alone, SHA-256 "
            f"{r['sha256_only_mb_s']:,.0f} MB/s and AES-GCM {r['aes_gcm_only_mb_s']:,.0f} MB/s; `bytes()` copy "
            f"{r['bytes_copy_mb_s']:,.0f} MB/s; CPU {r['cpu_flags']}; median of {r['runs']}"
        )
    if r["name"] == "training_throughput":
        return (
            "; ".join(
                f"{n}: engine {w['engine_samples_per_s']:,.0f} vs bare {w['bare_samples_per_s']:,.0f} samples/s "
                f"(×{w['ratio']:.3f} median of per-round ratios, ×{w['ratio_of_medians']:.3f} of medians, rounds "
                f"{w['ratio_min_max_of_rounds'][0]:.2f}–{w['ratio_min_max_of_rounds'][1]:.2f}; with evaluation "
                f"on both sides ×{w['ratio_with_eval']:.3f}, in CPU time ×{w['cpu_ratio_with_eval']:.3f}; "
                f"{w['train_rows']} rows, {w['epochs']} epochs, batch "
                f"{w['batch_size']}, val accuracy {w['val_accuracy']})"
                for n, w in r["workloads"].items()
            )
            + f"; evaluation time excluded from both sides; 1 thread; median of {r['runs']}"
        )
    if r["name"] == "checkpoint_overhead":
        return (
            "; ".join(
                f"{n}: save {w['save_ms']:.1f} ms (p95 {w['save_p95_ms']:.1f}), {w['bytes']:,} B; torch.save "
                f"{w['plain_torch_save_ms']:.1f} ms (+fsync {w['plain_fsync_ms']:.1f}, in memory "
                f"{w['serialize_ms']:.1f}); load_latest {w['load_latest_ms']:.1f} ms; throughput ×"
                f"{w['epoch_end_ratio']:.2f} with a checkpoint per epoch ({w['epoch_end_ms_per_checkpoint']:.0f} ms "
                f"each in the loop), ×{w['every_n_ratio']:.2f} adding one every {w['every_n_steps']} steps "
                f"({w['every_n_checkpoints']} in {w['steps']} steps)"
                for n, w in r["workloads"].items()
            )
            + f"; medians of {r['saves']} saves and {r['rounds']} runs"
        )
    return ""


def load_all_results() -> list[dict[str, Any]]:
    out = []
    for name in BENCHMARKS:
        path = RESULTS_DIR / f"{name}.json"
        if path.exists():
            out.append(json.loads(path.read_text()))
    return out


def print_table(results: list[dict[str, Any]]) -> None:
    print()
    print(f"{'benchmark':<22} {'value':>16} {'baseline':>16} {'ratio':>7}  met  target")
    for r in results:
        print(
            f"{r['name']:<22} {_fmt(r['value'], r['unit']):>16} {_fmt(r['baseline_value'], r['unit']):>16} "
            f"{r['ratio']:>7.3f}  {'yes' if r['target_met'] else 'NO ':<3}  {r['target']}"
        )
        print(f"{'':<22} {_details(r)}")
    print()


_ROW_RE = re.compile(r"^\| `(?P<name>[a-z0-9_]+)` \|")


def documented_rows(path: Path = DOC_PATH) -> dict[str, str]:
    """The table rows the page has now, by benchmark name (to carry over figures whose results file
    is not on this machine: bench/results/ is not versioned, the page is)."""
    try:
        text = path.read_text()
    except OSError:
        return {}
    rows: dict[str, str] = {}
    for line in text.splitlines():
        m = _ROW_RE.match(line)
        if m:
            rows[m.group("name")] = line
    return rows


def write_doc(run: dict[str, str]) -> Path:
    """docs/benchmarks.md from every bench/results/<name>.json and the facts of the last run.
    A benchmark without a results file keeps the row the page already had (with its own date)."""
    results = {r["name"]: r for r in load_all_results()}
    previous = documented_rows()
    table = [
        "| Benchmark | Measured | Baseline | Ratio | Target | Met | Details | Run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in BENCHMARKS:
        r = results.get(name)
        if r is None:
            if name in previous:
                table.append(previous[name])
            continue
        table.append(
            f"| `{r['name']}` | {_fmt(r['value'], r['unit'])} | {_fmt(r['baseline_value'], r['unit'])} | "
            f"{r['ratio']:.3f} | {r['target']} | {'yes' if r['target_met'] else '**no**'} | {_details(r)} | "
            f"{r.get('measured_at', '?')}{' (quick)' if r.get('quick') else ''} |"
        )
    facts = {**run, "postgres": run.get("postgres") or "PostgreSQL", "benchmarks": run.get("benchmarks", "all")}
    text = DOC_TEMPLATE.format(table="\n".join(table), **facts)
    DOC_PATH.write_text(text)
    log(f"wrote {DOC_PATH.relative_to(DOC_PATH.parent.parent)} and {RESULTS_DIR.relative_to(DOC_PATH.parent.parent)}/")
    return DOC_PATH


DOC_TEMPLATE = """# Benchmarks

Generated by `python -m bench.run` (`make bench`); do not edit by hand, rerun it. Each benchmark
also writes `bench/results/<name>.json` (`name, unit, value, baseline, baseline_value, ratio,
target, command`, plus its other figures). Speed targets are ratios or bounds against a baseline
measured side by side in the same run, never timed assertions in the test suite.

{table}

The Run column dates each row. A run of some benchmarks only (`--only`) rewrites their rows and
keeps the others as the page had them, so rows can come from different runs (and machine states).

## Last run

- Command: `{command}` ({kind}; took {elapsed_min} min); benchmarks: {benchmarks}
- Date: {date}, commit {git} (plus the working tree)
- Machine: {cpu}, {nproc} CPUs (`nproc`), {memory}, Linux {kernel}; Python {python}; {postgres}
  and Redis on the same machine; load average at start {load_at_start}
- Everything (PostgreSQL, Redis, the web server workers and the load generator) shares these CPUs, so
  absolute throughput is a floor, and figures move with whatever else the machine is doing.

## How each figure is measured

The first three benchmarks run against a scratch database (`cohort_bench`, created by the
superuser, owned by `cohort_owner`, migrated with `migrate --database owner`, dropped at the end),
served and queried as the application role `cohort_app` (RLS forced), so the development database is
left alone. The others exercise pure worker code and need no database.

**`api_list_rls`**: one uvicorn process (`config.asgi`, `--workers 2`, `bench.settings`: the local
settings with `DEBUG` off, the connection pool on and the rate limit raised so it never refuses but
still costs its Redis round trip) serves both endpoints. The measured one is the real
`GET /api/v1/tenants/bench/members/` as the tenant's owner (session cookie): session and user
lookup, tenant and membership resolution, role policy, throttle, tenant GUCs, the RLS-filtered
query and cursor pagination (a full page of 50 of the 51 members). The baseline is a bare DRF
`ListAPIView` at `/bench/bare/members/` with the same model, serializer and paginator and no
authentication, permission checks or throttle; it sets the tenant GUC itself (the app role sees no
rows without it), so the RLS predicate is evaluated in both and the ratio prices everything the
platform adds per request (the table shows how many SQL statements each makes, counted in
process). The load generator is a closed loop of 8 keep-alive HTTP/1.1 connections (asyncio, raw
sockets, to keep client CPU small) on the same 2 CPUs as the server; after a warm-up each endpoint
gets the same number of requests in 10 rounds that alternate which endpoint goes first, with fresh
connections per round. Throughput = requests / wall time. The p99 target is checked on service
latency, measured the same way with one connection (one request at a time, a quarter as many
requests): under the saturating 8-connection load, latency is mostly queueing (mean latency =
connections / throughput), which the table also shows. Latencies are client-side, nearest-rank
percentiles. A successful read is not itself audited (denials are), so no audit write is in this
path.

**`api_list_servers`**: the same two endpoints (the RLS members list and the bare DRF list) under
three server topologies started side by side against the same scratch database, each with the same
number of worker processes: `uvicorn config.asgi` (what `make run` served REST through before),
`gunicorn config.wsgi` with gthread workers on a TCP port (`deploy/`: behind nginx), and `make run`'s
port as it is now (`scripts/router.py` in front of gunicorn on a Unix socket, PROXY protocol, with
uvicorn behind `/ws/` only; the commands come from `scripts.cohort.web_commands`). Rounds rotate
which topology goes first. For each: req/s with 8 keep-alive connections, the ratio to the bare list
on the same server, and p50/p99 one request at a time. The headline ratio is the router's req/s over
uvicorn's; the target (issue 10 §5) is ≥ 3× uvicorn, p99 ≤ 25 ms and ≥ 0.8 × bare for both gunicorn
topologies.

**`audit_write_overhead`**: in process, N iterations alternate (a) the real service
`membership_change_role` (row lock, checks, UPDATE, `audited_change` + `audit_record`, i.e. the
`cohort_audit_append` call with its chain-head row lock, and the live-feed publish after commit) and
(b) the same change with no audit (`bench/workloads.py`: same lock, checks and UPDATE; the row-capture
trigger muted through the audit-context GUC, so nothing is written to the log). Each iteration is one
committed transaction in the tenant's scope, as in a request, run like a request in the server: sync
code in a worker thread under a running event loop, so the after-commit publish goes through that
loop's Redis connection (from plain sync code, e.g. a Celery task, each publish opens a new event
loop and Redis connection: about 4 ms more). The figure is p95(a); the target is p95(a) - p95(b) ≤
5 ms. The same comparison is repeated end to end through the server, one request at a time:
`PATCH /api/v1/tenants/bench/members/<id>/` (session + CSRF) against an identical view whose only
difference is the unaudited service (`/bench/unaudited/…`); N/2 requests each, in 10 alternating
rounds.

**`audit_verify_rate`**: the superuser writes N hash-chained events (default 1,000,000, or
`COHORT_BENCH_AUDIT_EVENTS`; `--quick`: 100,000) spread over 20 tenant chains with `COPY`, hashes
computed by `apps.audit.chain.event_hash` (the reference encoding; about 5% of events have non-ASCII
labels), sets the chain heads and runs `VACUUM ANALYZE`. Then, as the app role in platform scope,
`apps.audit.verification.audit_verify()` (every chain, every event re-hashed in Python, heads
checked) is timed against the baseline of only streaming the same rows through the same server-side
cursor (`iter_chain_rows`) in the same transaction setup, alternating, 3 runs each after one untimed
warm-up stream; medians are reported. Target: a million events in under 10 s. (The verifier reads
through a binary server-side cursor whose next batch a helper thread fetches while Python hashes the
current one, and builds each event's canonical text in one f-string when it is all ASCII; the
reference `canonical` handles the rest.)

**`dataset_ingest`** (a run of only the pure benchmarks creates no database): a CSV of
1 GiB (`--quick`: 100 MiB) is generated into a temporary folder (deleted at the end) with a clinical
mix of 15 columns: a patient id, first and last names (some non-ASCII), an email, a phone number, a
date of birth, a postcode, age, weight, blood pressure, cholesterol and HbA1c (some missing), a
diagnosis, short free-text notes that embed names and phone numbers (10% empty), and a 4-class
`outcome` label; strings are quoted, as exporters do. In a fresh Python process (so that peak
RSS, `ru_maxrss`, belongs to this measurement alone) the platform's pipeline runs on it:
`workers.pipeline.ingest_file` (sniff, validate, PII scan, infer the schema, convert, write
Parquet) into an `EncryptingWriter` over
a file on disk, then `workers.deid.transform.deidentify` reading that Parquet back through a
`DecryptingReader` and writing it through another `EncryptingWriter` under a policy that
pseudonymises `patient_id`, drops `email`, generalises `date_of_birth` to the year and redacts
`notes`. Ingest alone also runs, in another fresh process, on a 100 MiB file (`--quick`: 20 MiB):
memory is flat when the peak RSS of the big ingest is at most 1.5 times that of the small one (the
target). The baseline is `pandas.read_csv` of the big file in a third process (parse only: no
validation, PII scan, typed output or encryption). MB/s is CSV bytes (10^6) per second; the
headline is end to end (ingest + de-identify); one run each.

**`encryption_stage`** (pure): 256 MiB of random bytes in memory (`--quick`: 64 MiB) are written
in 1 MiB chunks through `workers.crypto.EncryptingWriter` (1 MiB frames, AES-256-GCM, framing and
nonces; `digest=False`) into a sink that discards the ciphertext, alternating 5 times with the baseline: copying
the same chunks into a preallocated buffer through memoryview slices. Decryption is
`DecryptingReader.readinto` 1 MiB at a time over the ciphertext in memory. The details also give
the writer with `digest=True` — what the platform's store step runs, since it also keeps the
plaintext's SHA-256 as the object's content hash, which costs more than the encryption — the
writer's two primitives alone (SHA-256, AES-GCM) and a `bytes()` copy of each chunk. Medians.

**`training_throughput`** (pure): `workers.training.engine.train` against a bare PyTorch loop with
the same model (from the registry), data tensors, batch size, optimizer settings (AdamW, same lr,
betas and weight decay) and one thread: an MLP (64-64) on scikit-learn's breast cancer (60 epochs;
`--quick` 10) and the small CNN on scikit-learn's digits packed as a PNG zip (6 epochs; `--quick`
2). The engine does what a job does minus the platform: seeded epoch permutations, deterministic
mode, loss-sum normalisation, the lr scheduler, per-epoch evaluation on the validation split with
all the task's metrics. The bare loop is what a competent user writes: shuffle each epoch, forward,
loss, backward, step, and at each epoch end the same evaluation call (`engine.evaluate`). Both
timers include building the model and optimizer. The headline excludes evaluation from both sides
(each side's wall time less the time inside its evaluation calls; `TrainResult.eval_seconds` for the
engine); the cache misses evaluation leaves behind for the next steps stay in both. The details also
give the ratio with evaluation included on both sides, in wall time and in CPU time (one thread, so
CPU time is the run's own work without the time the shared machine gave to other processes: the
least noisy figure). Training samples per second; 15 rounds that alternate which side goes first.
The machine is shared and its load comes in bursts longer than a run, so the ratio is the median of
the per-round ratios (each engine run against the bare run next to it); the details also give the
ratio of the median rates and the range over rounds. What the engine still does per step that the
bare loop does not: the scheduler step, the loss-sum rescale (one more tiny op forward and
backward), queuing the detached loss sum; per epoch it gathers the permuted rows once (the bare loop
indexes per batch). Not a `make bench` row yet: a whole job through Celery and the database. Resume
after kill -9 is measured by the end-to-end test (`reports/WRK-7.json`: 6.9 s from the kill to the
resumed claim with a 4 s lease, i.e. lease expiry plus a scheduler pass plus a worker start; the
production lease is `COHORT_JOB_LEASE_SECONDS`, 120 s) rather than here.

**GPU benchmark (`make bench-gpu`, `bench/gpu.py`): prepared, not yet run on a GPU.** On one CUDA
device it measures, for the engine and a bare PyTorch loop side by side, bf16-autocast training of
the small CNN on digits and MiniLM fine-tuning on generated text: samples/s, peak memory
(`torch.cuda.max_memory_allocated`) and the ratio, written to `bench/results/gpu_cnn_bf16.json` and
`gpu_minilm_bf16.json` within a time budget of a few minutes. Without CUDA it says so and writes
nothing; `--smoke` runs the same code on the CPU at tiny sizes (a test does). No GPU has been lent to
this work yet, so there are no GPU figures.

**`checkpoint_overhead`** (pure): the real `TrainState` of each `training_throughput` workload after
a short run (weights, AdamW moments, scheduler, RNG states, history; about 95 kB) saved with
`workers.training.checkpoint.save_checkpoint` as a job's sink saves it (`torch.save` streamed
through AES-256-GCM framing into an O_EXCL temp file, fsync, atomic rename, directory fsync, the
manifest with the plaintext SHA-256 written and fsynced the same way, pruning to 3), into a
temporary folder on the disk of the system temp directory; 30 saves (`--quick` 10), median and p95.
The baseline is the bare script's `torch.save(state, path)` (no encryption, rename or fsync); the
details add that plus one fsync, serialisation into memory alone, and `load_latest` +
`TrainState.from_dict` (what a restarted job reads: decrypt, SHA-256 against the manifest,
`torch.load(weights_only=True)`). Throughput: `train` with `NullSink` (no checkpoint states built at
all) against `train` with a sink that saves every checkpoint the engine emits, once with the
engine's policy (each epoch end) and once adding `checkpoint_every_steps` = half an epoch; the same
training otherwise (the interval is outside the spec hash), evaluation included on every side, 9
rounds in rotating order, each run paired with the run without checkpoints of its round, medians
over rounds (MLP 10 epochs, CNN 3). The in-loop cost per checkpoint (the difference over the
checkpoints written) adds the engine's state snapshot (copies of weights and optimizer state, RNG
capture) to the save. These epochs are tiny (15 and 23 steps, a fraction of a second), so a
checkpoint per epoch is a large share of them; a real job's epochs are longer, and its cost is the
ms per checkpoint times the checkpoints it writes. Target: at most 50 ms per checkpoint of these
states, so that one a second costs at most about 5%.

**`dp_sgd`** (pure): the engine's DP-SGD path (`train(..., privacy=DPConfig)`: seeded Poisson batch
masks and noise, Opacus' `GradSampleModule` and `DPOptimizer`, the accountant history) against
Opacus 1.6's own loop as its tutorials write it (`PrivacyEngine.make_private` with its Poisson
`DPDataLoader`, mean loss, `step`), on the same MLP (64, 64) over breast cancer, SGD lr 0.1,
sigma 1.0, clip 1.0, batch 32, 15 epochs (`--quick` 3), one thread. Both sides include building the
model; the engine's per-epoch evaluation is subtracted. 7 rounds in alternating order; the ratio is
the median of per-round ratios of samples/s. The two sides sample at slightly different rates
(the engine q = 32/N, Opacus 1/len(loader)), so their ε differ a little; both are shown. Target
(issue 11): the engine at least 0.8× Opacus.

**`fl_aggregate`** (pure): FedAvg as the platform runs it, `make_strategy("fedavg").aggregate(global,
updates, deltas=True)` with `updates` a generator, over 10 participants' deltas of 10M float32 each
(`COHORT_BENCH_FL_ELEMENTS`, `COHORT_BENCH_FL_SITES`; `--quick`: 1M) in four tensors, one thread.
The headline is the storage path: each delta is a safetensors file in a temporary folder, loaded by
`workers.training.weights.load_weights` when the generator is asked for it, as the round closer's
`updates()` does through `storage.load_tensors` (minus its decryption; after a warm-up the files
are in the page cache, so the disk is not timed). The baseline is the same generator with every
tensor summed once instead: a read-only pass over the same bytes through the same loading path.
The details add the same pair in memory (the deltas preallocated, the generator only yielding
them): the aggregation alone, float64 accumulation moving about five times the bytes of a float32
read. Flower 1.42 runs in its own venv (`bench/flower/aggregate_bench.sh`, which creates
`bench/flower/.venv` when it cannot import flwr; Flower's pins conflict with the platform's) on the
same files read into NumPy arrays beforehand; only the call is timed:
`flwr.server.strategy.aggregate.aggregate` (the issue's baseline, legacy `FedAvg` with
`inplace=False`) and `aggregate_arrayrecords` (what the Message-API `FedAvg` calls; its time
includes `Array.numpy()`). Flower's ratio is its time over ours in memory, since it too starts
from arrays in memory (the details also give Flower's time over the in-memory read pass: roughly
the most that any aggregation reading every byte once can reach). When Flower cannot run, the row
says so and the target counts as not met. 7 rounds alternating the order; ratios are medians of
per-round ratios. The storage path's time moves from run to run more than the others: each load
allocates 40 MB, and whether glibc serves it from pages already mapped or from fresh ones (a minor
fault per 4 KiB page, which costs more than the arithmetic) depends on what else is alive, so the
results file also gives the median minor faults of each timed call. Memory: fresh processes
run one aggregation each; the figure is the growth of peak RSS (`VmHWM`, reset through
`/proc/self/clear_refs` just before the call; it sees torch's allocations, which `tracemalloc`
does not) over the RSS at that moment, in units of one update: FedAvg in memory (the caller
holding the updates), the storage path with all participants and with 2 (equal: O(model), not
O(participants × model)), its read pass alone, and Flower's `aggregate` with every update loaded.
The result must equal a plain float64 reference mean (`global + Σ nᵢ·δᵢ / Σ nᵢ`, rounded to
float32) to 1e-6, the in-memory and storage results must be identical, and Flower's must agree to
1e-5 (it computes in float32). Target (issue): the storage path at least 0.8× the read pass, at
least 8× Flower's `aggregate`, extra peak at most 3× one update in memory and flat in the number
of participants.

**`fl_rounds`**: a 10-site × 5-round FedAvg federation (MLP (32), AdamW, 2 local epochs, batch 32)
on breast cancer and on digits, four ways on the same seeded sites, initialisation and per-(site,
round) training seeds: the platform (ten hospital tenants upload, de-identify and grant `federate`;
a lab drafts over the API, every owner approves, the lab starts; two warm Celery workers, `--pool
solo`, queues `fl,default`, with PostgreSQL, Redis, encrypted update storage, validation and audit;
warmed with a one-round federation before the clock starts), in-process Cohort
(`workers.federated.simulate.run`), a plain hand-written torch FedAvg loop, and Flower 1.42's
simulation engine with Ray (`run_simulation`, its `FedAvg`) from its own venv
(`bench/flower/rounds_bench.sh` creates `bench/flower/.venv` when it cannot import flwr). Whole
run: the platform from `POST .../start/` to the terminal status, Flower `run_simulation` end to end
(Ray start-up included). Steady round: median of rounds 2..R (the platform's from `Round.closed_at`).
Accuracy: each final model on the same 20% held-out rows, in no site. The platform draws a secret
per federation, so its per-(site, round) training seeds differ from the bench's fixed ones; the bar
("equal on the same seeds and splits") is therefore judged on the platform's own seeds: after the
hosted run, the plain loop and Flower train the hosted sites' rows under the hosted encoders with
the hosted secret, federation id and site ids, and the in-process run replays the hosted one
(`test_correct_same_seeds_as_platform`). The row also gives the counts on the bench's fixed seeds
(seed-to-seed spread, not a difference between systems). One result per (figure,
dataset) in `bench/results/fl_rounds_<figure>_<dataset>.json`; the row shows the worst whole-run
ratio. `--quick`: 3 sites × 3 rounds. Targets (issue 11): whole run ≤ 0.3× Flower's, steady round
≤ 1.0× Flower's and ≤ 2× the plain loop's, accuracy equal within 1 sample.

Last run (2026-12-07, 2 CPUs, embedded PostgreSQL 18 and Redis, after the admission, site-cache and
encrypted prepared-tensor work): whole run ×0.21 (breast cancer) and ×0.29 (digits) Flower's: met
(the helper's first run, before that work, measured ×0.42 / ×0.43); steady round ×1.47 / ×1.77
Flower's and ×25 / ×19 the plain loop's: **not met** (a small model's round is dominated by per-task
PostgreSQL round trips, Celery hops, encryption and audit, which Flower's in-memory loop does not
have). Accuracy: the platform draws a fresh secret per federation, so its training seeds differ from
the other three runs'; re-run in process with the hosted run's secret it is `torch.equal` to the
hosted model on both datasets (`torch_equal_to_inprocess` in the JSON). With its own seeds it gets
111 of 114 (as the others) and 344 of 359 on digits against 346: 2 samples, over the 1-sample bar.

`FL_ROUNDS_PROFILE=<dir>` runs the platform's workers under cProfile (`<dir>/worker<i>.prof`), a
diagnostic whose timings are not comparable. A profile (2026-12-07, in process, a steady site task
of 3 sites) put 42 ms in the task: 12 ms training, about half in 65 SQL statements over 12
short transactions (claim, site and grant check, event, nonce set, key use, usage, finish with its
audit rows, event, open-slot check), the rest in Celery and encryption.

**`ws_latency`**: worker-to-browser latency through the one websocket endpoint (`/ws/v1/`). uvicorn
(`config.asgi`, 2 workers, `bench.settings`) with the Redis channel layer; 100 clients (one asyncio
process of their own, the `websockets` library) open `/ws/v1/` with a session and subscribe to the
tenant's activity stream; the runner's process writes audit events through `audit_record`, each in
its own transaction, at 20 events/s for 10 s. An event's `time` is stamped in its transaction, so a
client's latency (arrival − `time`) covers the commit, the publish after commit, Redis, the
consumer's dedup and numbering, and the websocket. A burst phase writes events back to back and
counts deliveries per second (each a message to one client). Baseline: the same ticks on a raw
Redis pub/sub channel relayed by a bare `websockets` server (no Django, no Channels) to the same
100 clients: the floor of this fan-out on this machine. Target (issue 12): p99 ≤ 100 ms with every
event delivered. `--quick`: 20 clients, 3 s.

Earlier run (2026-12-07 12:02, before the hot-path work below, load 0.8 at start): every event
reached every client (20,000 of 20,000) with p50 21 ms, p99 160 ms (160–165 over three runs;
baseline p99 13 ms).

Hot path (commit 4c29b0e). A cProfile of one server worker with 50 clients at 10 events/s found,
per delivered event, a thread hop in Channels' `dispatch` (`close_old_connections` through the
one shared sync thread, for every message to every consumer: 16% of the worker's time, and a queue
that serialises all its consumers), the websocket write with permessage-deflate (about 20%,
inherent; the baseline pays it too), channels_redis' per-consumer `receive` (about 18%: two futures
and an `asyncio.wait` per consumer per message) and a JSON encoding per socket; the recheck took
three thread hops per socket. Now channel-layer messages skip that hop (the socket reads only
through its own `_db` wrapper, which closes stale connections in its thread), an event's frame is
encoded once per process and stream with each socket's `prev` spliced in, and a recheck is one
hop. The same profiled workload went from 4.8 s to 3.3 s of server time, and the burst's server CPU
per delivery from 285–318 µs to 194–238 µs.

Earlier runs with `channels_redis`' `RedisChannelLayer` (before the platform's own layer, below),
after the hot-path work: p99 143–424 ms under load from other work, 131 ms on a quiet machine
(2026-12-07 18:13, load 0.0: p50 15 ms, max 330 ms; baseline p99 12 ms). Each event was a Redis
pop per socket: 50 round trips per event in each server worker, one after the other.

Since `apps.common.channel_layer.FanoutChannelLayer` (one pub/sub subscription per server worker
for a group, each event decoded once and the same message handed to each of its sockets, which then
also share its encoded frame): **met**. Same machine, quiet (2026-12-07 18:22, load 0.8): p50 14 ms,
p99 27 ms, max 75 ms, 20,000 of 20,000 delivered; baseline p50 9 ms, p99 14 ms; the burst 6,528
deliveries/s (was 4,128); again at 18:40 (the row above): p99 22 ms, burst 8,130/s (still bound
by the producer's audit writes, about 65 a second, each its own
transaction with its chain-head lock, while the baseline's producer is a bare `PUBLISH`). What remains
per delivery is Channels' own machinery (each socket's `receive` and dispatch), the websocket
write and its permessage-deflate. Under heavy load from other work the tail grows with the commit
and PostgreSQL, which this figure includes and the baseline does not.

**`ws_throughput`**: events per second through the channel layer the platform is configured with
(`settings.CHANNEL_LAYERS`: `apps.common.channel_layer.FanoutChannelLayer`, capacity 1,000),
under a prefix of its own on the same Redis. Two receiver processes (as two server workers) each
open 50 channels (`new_channel`), add them to one group and run one task per channel awaiting
`receive`, as a consumer does; the runner's process calls `group_send` for 2,000 events back to
back, one after the other, as the publisher's sender thread does. An event counts when it reached
all 100 channels; the figure is events per second from the first send to the last receipt (a
receiver stops 2 s after its last message, so what the layer dropped shows as lost, not as a
hang). Baseline, the floor of the same fan-out: the producer `PUBLISH`es each event on a raw Redis
pub/sub channel; each receiver process holds one subscription, decodes each message once and puts
it on its 50 local queues, each read by its task. The details also give channels_redis' other
layer, `RedisPubSubChannelLayer` (one `PUBLISH` per group send; not what the platform runs). Each
side runs 3 rounds in rotating order; medians, the ratio a median of per-round ratios. `--quick`:
20 channels, 200 events, one round. Target: at least 0.5× the pub/sub floor with every event
delivered. What the product needs is far less than either: a 10-site federation round emits about
42 federation events (the round's opening with its 10 selections in one transaction, each site's
admission, training and submission, the close) and about as many audit rows on the activity
stream, over seconds; the part that matters is a burst (a round's opening, 11 events at once)
reaching every subscriber without loss. The ratio is the layer's own cost per event against what
any fan-out over Redis must pay.

History. With `channels_redis`' `RedisChannelLayer` (capacity 100, expiry 60 s; 2026-12-07, 2 CPUs,
load 0.0–0.3): 230–289 events/s against the floor's 6,401–7,010 (×0.03–0.04), **not met**, and over
half of each burst lost (328,250–332,500 of 600,000 deliveries). Receiving was the bottleneck: for
each message a process made four Redis calls (the backup clean-up script, `BZPOPMIN`, the backup
`ZADD`, the cleaner's `ZPOPMIN`) and woke each of its 50 channel tasks through `receive`'s race
between its lock and its buffer, about 70 µs per local delivery; once a process's queue held 100
messages, `group_send` dropped the rest for it. `RedisPubSubChannelLayer` lost nothing but moved
2,786–4,257 events/s (×0.43–0.6): it queues the raw bytes for every channel and decodes them once
per channel, and its queues are unbounded.

Now the platform runs its own layer, `apps.common.channel_layer.FanoutChannelLayer` (Redis pub/sub;
each process subscribes once to a group its channels joined, decodes each message once and hands
the same object to each local channel; an inbox holding 1,000 undelivered messages drops its
oldest, so a stalled socket sees the gap at its next message and fills it from the database).
Runs of 2026-12-07 18:24–18:41 (quiet machine): ×0.54, ×0.82, ×0.81, ×0.78 of the floor (4,174,
4,977, 6,066 and 5,502 events/s against 8,378, 7,375, 6,850 and 7,397), nothing lost: **met**. The first of these ran
before the name check on each `receive` and `group_send` was taken off the hot path (a channel
name is checked once, when made; a group name once per name). What is left over the floor is the
msgpack encoding and Channels' `receive` call per channel. For the product: a 10-site round's
events reach 100 subscribers in well under a millisecond of layer time.

**`webapp_bundle`** (pure): what a browser downloads before the web app can render. `frontend/` is
built by its own Vite config (`vite build`, the step `scripts/frontend.py build` runs after `tsc`)
into a temporary folder, so the served `frontend/dist` is left alone; the figure is every file the
built `index.html` loads (its module script, stylesheets and module preloads), gzipped at level 6
(what most servers use for text; kB = 1,000 bytes), with the raw bytes beside it; chunks loaded
later (`import()`) are counted apart. Baseline: a minimal app in another temporary folder with the
same dependencies at the same versions (a link to `frontend/node_modules`): React and ReactDOM
render one component that draws a uPlot chart and imports uPlot's stylesheet as
`frontend/src/Chart.tsx` does, built by the same Vite and React plugin with the same `base`. The
ratio is the app's weight over that framework floor; the details give the difference, the app's
own code. Target: at most 200 kB gzipped for the initial load, a budget that keeps the first
download near a second on a slow hospital or home connection (about 1.5 Mbit/s) and parse time small
on an old laptop; the floor alone is about half of it. Without Node.js or `frontend/node_modules`
the row says skipped. `--quick` is the same run (a build has no smaller size).

Last run (2026-12-07, Vite 8.4, React 19.3, uPlot 1.6): 109.9 kB gzipped (346.8 kB raw) in one
script and one stylesheet: met, ×1.22 the 90.2 kB floor. The app's own code (every page, the
socket client, the router and its styles) is about 20 kB of it gzipped; React DOM is most of the
rest. There is no code splitting yet, so every page ships on the first load; at this size it is not
worth a second round trip. The build was of `frontend/` as the working tree stood (pages under
edit beside this work), so the figure moves with them.

**`webapp_first_render`**: time to first render of the federation page in real headless Chromium
(Debian's `/usr/bin/chromium` driven by Playwright with `executable_path`; never a downloaded
browser). The stack is what `make run` serves (`scripts/cohort.py run`: the router in front of
gunicorn, uvicorn for the websocket, one Celery worker, whitenoise serving the built app's
compressed assets) on a fresh database of its own (`cohort_bench_web`, dropped at the end), seeded
with the demo; the demo analyst signs in once and starts the demo federation (3 hospitals,
5 rounds), and the benchmark waits until it is completed. Measured: `/app/t/st-marys/federations/<id>`
with the analyst's session cookie, from the navigation's start (`performance.timeOrigin`) to the
first animation frame in which the per-site table has every site's row and both charts (global and
per-site metrics) are laid out with data, polled in the page each frame (the page's own clock): the
HTML, script and stylesheet, the session check, the federation, sites, rounds and metrics reads,
React's render and uPlot's canvases. Baseline: the same app's sign-in page signed out (`/app/`, to
the frame with the password field laid out): the same HTML, script, stylesheet and session check
on the same server and browser, none of the federation page's reads or drawing; the ratio is what
the federation page adds to the app's own start. Cold: a new browser context per load (empty
cache, new connections); warm: one context, loaded once untimed, then again (hashed assets
cached; `index.html` is `no-cache`). 7 loads of each (alternating pages), medians. Target: the cold
median at most 1,000 ms, chosen before measuring: on localhost there is no network, so the whole
budget is the browser's and the server's work, well inside the 2.5 s that web guidance calls a good
largest paint with a real network. `--quick`: the draft federation as seeded (no rounds, charts
empty), 2 loads each, never counted as met. Without Chromium or Playwright the row says skipped.

Last run (2026-12-07, Chromium 156 headless, load 2.9 at start and 4.2 at the end, the stack's own
worker, gunicorn and uvicorn on the same 2 CPUs; the demo federation completed its 5 rounds in
6.5 s): cold 684 ms (552–745), warm 236 ms: met; the sign-in page cold 292 ms, warm 174 ms, so the
federation page costs ×2.3 the app's own start cold and ×1.35 warm. A resource-timing waterfall of
three cold loads: the script and stylesheet arrive by 95–135 ms, the script has run by 200–280 ms
(`DOMContentLoaded`), then the reads go in a chain: `auth/me/` (8–16 ms), `tenants/`
(17–32 ms), then the federation, its sites and rounds in parallel (32–160 ms each: the server's
queries under this load), and the frame with the table and both charts follows the last of them.
The chain of two reads before the page's own three is the cheapest thing to shorten (the tenant
list could come with `auth/me/`). `make run` serves the app with `DEBUG` on, where whitenoise reads
`frontend/dist` through the finders and sends the 342 kB script uncompressed (no `.gz` there);
production settings serve the collected `.gz` (about 110 kB), which matters on a real network,
not on localhost.

## Reproduce

```bash
make bench                                    # full run (a few minutes)
.venv/bin/python scripts/cohort.py exec -- .venv/bin/python -m bench.run --quick           # smoke sizes
.venv/bin/python scripts/cohort.py exec -- .venv/bin/python -m bench.run --only audit_verify_rate --keep-db
.venv/bin/python scripts/cohort.py exec -- .venv/bin/python -m bench.run --only dataset_ingest encryption_stage
.venv/bin/python scripts/cohort.py exec -- .venv/bin/python -m bench.run --only training_throughput checkpoint_overhead
.venv/bin/python scripts/cohort.py exec -- .venv/bin/python -m bench.run --only fl_aggregate
.venv/bin/python scripts/cohort.py exec -- .venv/bin/python -m bench.run --only ws_latency ws_throughput
.venv/bin/python scripts/cohort.py exec -- .venv/bin/python -m bench.run --only webapp_bundle
.venv/bin/python scripts/cohort.py exec -- .venv/bin/python -m bench.run --only webapp_first_render
.venv/bin/python scripts/cohort.py exec -- .venv/bin/python -m bench.run --only fl_rounds
```

`--keep-db` leaves the scratch database (with its seeded events) for a later `--reuse-db` run;
`--doc-only` rewrites this page from `bench/results/`; `--strict` exits 1 when a target is missed.
Run it on a quiet machine: the figures above are only as good as the machine was idle.
"""


if __name__ == "__main__":
    raise SystemExit(main())
