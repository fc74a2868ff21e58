"""``ws_throughput`` at smoke size (20 channels, 200 events, one round): the results file's shape,
every side measured, the raw pub/sub floor losing nothing. Needs the Redis of ``REDIS_URL`` only."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

import bench.common
from bench import ws_throughput
from bench.common import RESULT_KEYS


def test_quick_run_writes_the_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench.common, "RESULTS_DIR", tmp_path)
    ctx = SimpleNamespace(opts=SimpleNamespace(command="pytest tests/bench/test_ws_throughput.py", quick=True))
    res = ws_throughput.run(ctx)
    data = json.loads((tmp_path / "ws_throughput.json").read_text())
    assert tuple(data)[: len(RESULT_KEYS)] == RESULT_KEYS
    assert data == json.loads(json.dumps(res))
    assert data["name"] == "ws_throughput" and data["unit"] == "events/s" and data["quick"] is True
    assert data["channels"] == ws_throughput.QUICK_CHANNELS and data["events"] == ws_throughput.QUICK_EVENTS
    assert data["backend"] == "apps.common.channel_layer.FanoutChannelLayer"  # the configured layer
    assert data["lost"] == 0  # its inboxes hold 1,000 each: 200 events never overflow them
    assert data["value"] > 0 and data["baseline_value"] > 0 and data["ratio"] > 0
    assert data["baseline_lost"] == 0  # the floor's queues are unbounded
    assert data["pubsub_layer"] is not None and data["pubsub_layer"]["events_per_s"] > 0
    assert set(data["rounds_detail"]) == {"channels", "pubsub", "pubsub_layer"}
    assert isinstance(data["target_met"], bool)
    assert data["target_met"] == (data["ratio"] >= ws_throughput.TARGET_RATIO and data["lost"] == 0)
