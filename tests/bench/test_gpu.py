"""``python -m bench.gpu``: the smoke run exercises the GPU benchmark's code on the CPU; without CUDA a
real run writes nothing. Pure: no database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench import gpu
from bench.common import RESULT_KEYS


def test_smoke_run_writes_both_results(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    assert gpu.main(["--smoke", "--results-dir", str(tmp_path)]) == 0
    assert torch.get_num_threads() == threads
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_cnn_bf16.json", "gpu_minilm_bf16.json"]
    for path in tmp_path.iterdir():
        data = json.loads(path.read_text())
        assert tuple(data)[: len(RESULT_KEYS)] == RESULT_KEYS
        assert data["name"] == path.stem and data["smoke"] is True and data["command"] == "make bench-gpu"
        assert data["unit"] == "samples/s" and data["value"] > 0 and data["baseline_value"] > 0
        assert data["ratio"] == pytest.approx(data["value"] / data["baseline_value"], rel=0.01, abs=1e-3)
        assert data["engine_peak_memory_mib"] is None  # CPU: no CUDA allocator statistics
        assert data["runs"] == 1 and data["train_rows"] > 0


def test_without_cuda_nothing_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gpu, "RESULTS_DIR", tmp_path / "results")
    assert gpu.main([]) == 0
    assert "CUDA is not available" in capsys.readouterr().out
    assert not (tmp_path / "results").exists()
