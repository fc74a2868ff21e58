"""``webapp_bundle``: which files count as the initial load, the skip without Node.js, and (where
Node.js and ``frontend/node_modules`` are installed) a real run: both builds, the results file's
shape, the app heavier than its framework floor. ``frontend/dist`` is never touched."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

import bench.common
from bench import webapp_bundle
from bench.common import RESULT_KEYS


def _ctx() -> SimpleNamespace:
    return SimpleNamespace(opts=SimpleNamespace(command="pytest tests/bench/test_webapp_bundle.py", quick=True))


def test_the_initial_load_is_what_index_html_references(tmp_path: Path) -> None:
    (tmp_path / "assets").mkdir()
    for name, body in (("a.js", "x" * 100), ("b.css", "y" * 10), ("vendor.js", "z" * 50), ("lazy.js", "w" * 7)):
        (tmp_path / "assets" / name).write_text(body)
    (tmp_path / "index.html").write_text(
        '<html><head><script type="module" crossorigin src="/static/app/assets/a.js"></script>'
        '<link rel="modulepreload" crossorigin href="/static/app/assets/vendor.js">'
        '<link rel="stylesheet" crossorigin href="/static/app/assets/b.css">'
        '<link rel="icon" href="/static/app/favicon.svg"></head></html>'
    )
    got = webapp_bundle.sizes(tmp_path)
    assert got["files"] == ["assets/a.js", "assets/vendor.js", "assets/b.css"]
    assert got["initial"]["raw"] == 160 and got["initial_css"]["raw"] == 10
    assert got["later_files"] == ["assets/lazy.js"] and got["later"]["raw"] == 7
    assert 0 < got["initial"]["gzip"] < got["initial"]["raw"] + 3 * 30  # gzip of each file, headers and all


def test_without_node_it_is_skipped_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench.common, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(webapp_bundle, "node", lambda: None)
    res = webapp_bundle.run(_ctx())
    assert "Node.js" in res["skipped"] and res["target_met"] is False
    assert tuple(json.loads((tmp_path / "webapp_bundle.json").read_text()))[: len(RESULT_KEYS)] == RESULT_KEYS


def test_quick_run_builds_both_and_leaves_dist_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    why = webapp_bundle.unavailable()
    if why is not None:
        pytest.skip(why)
    dist = webapp_bundle.APP / "dist"
    before = sorted((p.name, p.stat().st_mtime_ns) for p in dist.rglob("*")) if dist.is_dir() else None
    monkeypatch.setattr(bench.common, "RESULTS_DIR", tmp_path)
    res = webapp_bundle.run(_ctx())
    data = json.loads((tmp_path / "webapp_bundle.json").read_text())
    assert tuple(data)[: len(RESULT_KEYS)] == RESULT_KEYS and data == json.loads(json.dumps(res))
    assert data["unit"] == "kB (gzip)" and data["value"] > data["baseline_value"] > 30  # React alone is more
    assert any(f.endswith(".js") for f in data["files"]) and any(f.endswith(".css") for f in data["files"])
    assert data["initial_raw_kb"] > data["value"] and data["target_met"] == (data["value"] <= 200)
    after = sorted((p.name, p.stat().st_mtime_ns) for p in dist.rglob("*")) if dist.is_dir() else None
    assert after == before
