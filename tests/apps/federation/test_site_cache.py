"""The site worker's cache: keyed by its inputs, bounded in bytes and time, off at 0 MB."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from apps.federation.services.site_cache import LRU, inputs_digest


def _mb(n: float) -> dict[str, torch.Tensor]:
    return {"w": torch.zeros(int(n * 1024 * 1024 / 4))}


def test_hit_returns_the_same_value_and_computes_once(settings: Any) -> None:
    settings.COHORT_FL_CACHE_MB = 64
    cache, calls = LRU(), []
    first = cache.get_or_compute(("f", 1), lambda: calls.append(1) or _mb(1))
    again = cache.get_or_compute(("f", 1), lambda: calls.append(1) or _mb(1))
    assert again is first and calls == [1] and (cache.hits, cache.misses) == (1, 1)
    other = cache.get_or_compute(("f", 2), lambda: _mb(1))
    assert other is not first


def test_bounded_in_bytes_least_recently_used_out(settings: Any) -> None:
    settings.COHORT_FL_CACHE_MB = 10
    cache = LRU()
    for k in range(4):
        cache.get_or_compute(k, lambda: _mb(2))
    cache.get_or_compute(0, lambda: pytest.fail("0 was used last but one round ago: still cached"))
    for k in range(4, 8):
        cache.get_or_compute(k, lambda: _mb(2))
    assert len(cache) <= 5  # 10 MB of 2 MB values
    recomputed: list[int] = []
    cache.get_or_compute(1, lambda: recomputed.append(1) or _mb(2))
    assert recomputed == [1]
    # A value over a quarter of the bound is returned but not kept.
    big = cache.get_or_compute("big", lambda: _mb(3))
    assert cache.get_or_compute("big", lambda: _mb(3)) is not big


def test_expires_after_its_time_and_zero_turns_it_off(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import apps.federation.services.site_cache as mod

    settings.COHORT_FL_CACHE_MB, settings.COHORT_FL_CACHE_SECONDS = 64, 60
    now = [1000.0]
    monkeypatch.setattr(mod.time, "monotonic", lambda: now[0])
    cache = LRU()
    v = cache.get_or_compute("k", lambda: _mb(1))
    now[0] += 59
    assert cache.get_or_compute("k", lambda: _mb(1)) is v
    now[0] += 61
    assert cache.get_or_compute("k", lambda: _mb(1)) is not v
    settings.COHORT_FL_CACHE_MB = 0
    off = LRU()
    a = off.get_or_compute("k", lambda: _mb(1))
    assert off.get_or_compute("k", lambda: _mb(1)) is not a and len(off) == 0


def test_the_inputs_digest_changes_with_encoders_or_spec() -> None:
    enc = {"kind": "tabular", "label": {"kind": "classes", "classes": [0, 1]}}
    spec = {"model": {"name": "mlp"}, "seed": 1}
    d = inputs_digest(enc, spec)
    assert d == inputs_digest(dict(enc), dict(spec))
    assert d != inputs_digest({**enc, "label": {"kind": "classes", "classes": [0, 1, 2]}}, spec)
    assert d != inputs_digest(enc, {**spec, "seed": 2})
