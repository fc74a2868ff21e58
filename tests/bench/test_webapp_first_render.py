"""``webapp_first_render``: the skip without Chromium, and (where Chromium, Playwright and the
launcher's servers are there) a ``--quick`` run: the stack up on its own database, the draft demo
federation's page and the sign-in page loaded cold and warm, the results file's shape, never met.
Takes about a minute (the stack's migrate and seed)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

import bench.common
from bench import webapp_first_render
from bench.common import RESULT_KEYS

pytestmark = [pytest.mark.e2e]


def _ctx() -> SimpleNamespace:
    return SimpleNamespace(opts=SimpleNamespace(command="pytest tests/bench/test_webapp_first_render.py", quick=True))


def test_without_chromium_it_is_skipped_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench.common, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(webapp_first_render, "CHROMIUM", str(tmp_path / "no-chromium"))
    res = webapp_first_render.run(_ctx())
    assert "no Chromium" in res["skipped"] and res["target_met"] is False
    assert tuple(json.loads((tmp_path / "webapp_first_render.json").read_text()))[: len(RESULT_KEYS)] == RESULT_KEYS


def test_quick_run_loads_both_pages_cold_and_warm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    why = webapp_first_render.unavailable()
    if why is not None:
        pytest.skip(why)
    monkeypatch.setattr(bench.common, "RESULTS_DIR", tmp_path)
    res = webapp_first_render.run(_ctx())
    data = json.loads((tmp_path / "webapp_first_render.json").read_text())
    assert tuple(data)[: len(RESULT_KEYS)] == RESULT_KEYS and data == json.loads(json.dumps(res))
    n = webapp_first_render.QUICK_LOADS
    for page in ("federation", "sign_in"):
        for kind in ("cold", "warm"):
            assert len(data["times_ms"][page][kind]) == n and all(t > 0 for t in data["times_ms"][page][kind])
    assert data["value"] == pytest.approx(data["cold_ms"], abs=0.1) and data["value"] > 0
    assert data["baseline_value"] == pytest.approx(data["baseline_cold_ms"], abs=0.1) and data["baseline_value"] > 0
    assert data["closed_rounds"] == 0 and data["target_met"] is False  # quick: the draft, never met
    assert data["chromium"]
