"""``fl_aggregate`` at a tiny size: the results file's shape, and FedAvg from the update files equal
to a mean computed here by stacking. Pure: no database; Flower only where its venv exists."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import bench.common
from bench import fl_aggregate
from bench.common import RESULT_KEYS, Options

FLOWER_PYTHON = Path(bench.common.ROOT) / "bench" / "flower" / ".venv" / "bin" / "python"
ELEMENTS, SITES = 10_000, 3


def _write_updates(folder: Path) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]], list[int]]:
    from workers.training.weights import save_weights

    shapes = fl_aggregate.layout(ELEMENTS)
    base = fl_aggregate.global_state(shapes)
    deltas = [fl_aggregate.site_delta(shapes, i) for i in range(SITES)]
    for path, delta in zip(fl_aggregate.update_paths(folder, SITES), deltas, strict=True):
        save_weights(delta, path, {})
    return base, deltas, fl_aggregate.example_counts(SITES)


def test_layout_has_exactly_the_requested_elements() -> None:
    for elements in (10_000, 123_457, 1_000_000, 10_000_000):
        assert sum(torch.Size(s).numel() for s in fl_aggregate.layout(elements).values()) == elements
    assert fl_aggregate.layout(10_000_000)["head.weight"] == (1000, 1998)
    with pytest.raises(ValueError):
        fl_aggregate.layout(9_999)


def test_fedavg_from_files_is_the_weighted_mean(tmp_path: Path) -> None:
    base, deltas, weights = _write_updates(tmp_path)
    paths = fl_aggregate.update_paths(tmp_path, SITES)
    result = fl_aggregate.fedavg(base, fl_aggregate.file_updates(paths, weights))
    w = torch.tensor(weights, dtype=torch.float64)
    assert list(result) == list(base)
    for key, ref in base.items():
        stacked = torch.stack([d[key].double() for d in deltas])
        mean = (stacked * w.reshape(-1, *[1] * ref.dim())).sum(0) / w.sum()
        expected = (ref.double() + mean).float()
        assert result[key].dtype == torch.float32 and result[key].shape == ref.shape
        torch.testing.assert_close(result[key], expected, rtol=0, atol=1e-6)
        assert not torch.equal(result[key], ref)  # the deltas moved it
    assert fl_aggregate.max_abs_diff(result, fl_aggregate.reference_mean(base, deltas, weights)) <= 1e-6
    total = sum(float(t.sum()) for d in deltas for t in d.values())
    assert fl_aggregate.read_pass(fl_aggregate.file_updates(paths, weights)) == pytest.approx(total, abs=1e-3)


def test_tiny_run_writes_the_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench.common, "RESULTS_DIR", tmp_path)
    monkeypatch.setenv("COHORT_BENCH_FL_ELEMENTS", str(ELEMENTS))
    monkeypatch.setenv("COHORT_BENCH_FL_SITES", str(SITES))
    monkeypatch.setenv("COHORT_BENCH_FL_REPEATS", "1")
    monkeypatch.setenv("COHORT_BENCH_FLOWER", "0")
    opts = Options(quick=True, command="test", audit_events=0, requests=0, concurrency=1, write_iterations=0)
    threads = torch.get_num_threads()
    res = fl_aggregate.run(SimpleNamespace(opts=opts))
    assert torch.get_num_threads() == threads
    data = json.loads((tmp_path / "fl_aggregate.json").read_text())
    assert data == res
    assert tuple(data)[: len(RESULT_KEYS)] == RESULT_KEYS
    assert data["name"] == "fl_aggregate" and data["unit"] == "ms" and data["command"] == "test"
    assert data["value"] > 0 and data["baseline_value"] > 0 and data["ratio"] > 0
    assert data["sites"] == SITES and data["elements"] == ELEMENTS and data["runs"] == 1
    assert all(len(v) == 1 for v in data["seconds"].values())
    assert set(data["minor_faults_median"]) == set(data["seconds"]) == {"files", "files_read", "memory", "memory_read"}
    assert data["max_abs_error_vs_reference"] <= 1e-6 and data["files_equal_memory"] is True
    probes = data["extra_peak_probes"]
    assert {p["sites"] for p in probes.values()} == {SITES, 2}
    for key, multiple in data["extra_peak_updates"].items():
        assert probes[key]["peak_reset"] is True, "Linux resets VmHWM through /proc/self/clear_refs"
        assert multiple is not None and multiple >= 0
    # Flower left out: recorded as unavailable, so the target cannot count as met.
    assert data["flower_available"] is False and "COHORT_BENCH_FLOWER" in data["flower_unavailable_reason"]
    assert data["target_met"] is False


def _flower_importable() -> bool:
    if not FLOWER_PYTHON.exists():
        return False
    return subprocess.run([str(FLOWER_PYTHON), "-c", "import flwr"], capture_output=True, check=False).returncode == 0


@pytest.mark.skipif(not _flower_importable(), reason="bench/flower/.venv with flwr not built (make_golden.sh)")
def test_flower_agrees_with_ours(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.training.weights import save_weights

    monkeypatch.delenv("COHORT_BENCH_FLOWER", raising=False)
    base, _deltas, weights = _write_updates(tmp_path)
    paths = fl_aggregate.update_paths(tmp_path, SITES)
    save_weights(base, tmp_path / "global.safetensors", {})
    ours = fl_aggregate.fedavg(base, fl_aggregate.file_updates(paths, weights))
    save_weights(ours, tmp_path / "ours.safetensors", {})
    config = {
        "files": [str(p) for p in paths],
        "weights": weights,
        "repeats": 1,
        "global": str(tmp_path / "global.safetensors"),
        "ours": str(tmp_path / "ours.safetensors"),
    }
    flower, why = fl_aggregate.run_flower(config, tmp_path)
    assert flower is not None, why
    assert flower["flwr"].startswith("1.42") and flower["participants"] == SITES and flower["elements"] == ELEMENTS
    assert flower["max_abs_diff_aggregate"] <= 1e-5 and flower["max_abs_diff_arrayrecords"] <= 1e-5
    assert flower["aggregate_seconds_median"] > 0 and flower["aggregate_extra_peak_bytes"] is not None


def test_flower_failure_is_reported_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COHORT_BENCH_FLOWER", raising=False)
    monkeypatch.setattr(fl_aggregate, "FLOWER_SCRIPT", tmp_path / "missing.sh")  # as if the venv could not be built
    flower, why = fl_aggregate.run_flower({"files": [], "weights": [], "repeats": 1}, tmp_path)
    assert flower is None and why.startswith("exit 127")
