"""``fl_rounds`` at a tiny size (3 sites × 2 rounds): the results files' shape, and the plain torch
FedAvg loop reaching the in-process Cohort run's model. Pure: no database, no Celery, no Flower."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

import bench.common
from bench import fl_rounds
from bench.common import RESULT_KEYS

SITES, ROUNDS = 3, 2
FIGURES = ("whole_vs_flower", "steady_vs_flower", "steady_vs_plain")


def _ctx() -> SimpleNamespace:
    return SimpleNamespace(opts=SimpleNamespace(command="pytest tests/bench/test_fl_rounds.py", quick=True))


@pytest.mark.parametrize("dataset", fl_rounds.DATASETS)
def test_plain_loop_reaches_the_in_process_model(dataset: str) -> None:
    w = fl_rounds.workload(dataset, sites=SITES, rounds=ROUNDS)
    plain = fl_rounds.run_plain(w)
    inproc = fl_rounds.run_inprocess(w)
    assert len(plain["round_s"]) == len(inproc["round_s"]) == ROUNDS
    assert fl_rounds.max_abs_diff(plain["state"], inproc["state"]) < 1e-4
    assert abs(plain["correct"] - inproc["correct"]) <= 1
    assert plain["correct"] / len(w.y_test) > 0.7  # it learned something
    # the held-out rows are in no site
    site_rows = sum(s.table.num_rows for s in w.sites)
    assert site_rows + w.test_table.num_rows == len(fl_rounds.load_frame(dataset))


def test_tiny_run_writes_the_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench.common, "RESULTS_DIR", tmp_path)
    res = fl_rounds.run(_ctx(), sites=SITES, rounds=ROUNDS, flower=False, platform=False)
    assert tuple(res)[: len(RESULT_KEYS)] == RESULT_KEYS
    assert res["name"] == "fl_rounds" and isinstance(res["target_met"], bool)
    for ds in fl_rounds.DATASETS:
        for fig in FIGURES:
            data = json.loads((tmp_path / f"fl_rounds_{fig}_{ds}.json").read_text())
            assert tuple(data)[: len(RESULT_KEYS)] == RESULT_KEYS
            assert data["ours"] == "inprocess" and data["platform_available"] is False
            assert data["flower_available"] is False
            assert set(data["test_correct"]) == {"plain", "inprocess"}
            assert data["accuracy_equal_within_1_sample"] is True
            assert len(data["round_s"]["plain"]) == ROUNDS
            if fig == "steady_vs_plain":
                assert data["baseline_value"] > 0 and data["ratio"] > 0
            else:  # no Flower asked for: marked unavailable, never met
                assert data["baseline_value"] == 0 and data["target_met"] is False
        assert res["test_correct"][ds]["plain"] == res["test_correct"][ds]["inprocess"]


def test_missing_flower_is_reported_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench.common, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(fl_rounds, "FLOWER_DIR", tmp_path / "no-flower")
    monkeypatch.setattr(fl_rounds, "FLOWER_PYTHON", tmp_path / "no-flower" / ".venv" / "bin" / "python")
    res = fl_rounds.run(_ctx(), sites=SITES, rounds=ROUNDS, datasets=["breast_cancer"], platform=False)
    data = json.loads((tmp_path / "fl_rounds_whole_vs_flower_breast_cancer.json").read_text())
    assert data["flower_available"] is False and data["flower_unavailable_reason"]
    assert "unavailable" in data["baseline"] and res["target_met"] is False
