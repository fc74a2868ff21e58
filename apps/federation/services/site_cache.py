"""A site worker's memory between rounds: each site's prepared tensors and each round's global model.

A federation's site task decrypts the site's pinned version, encodes it with the federation's
merged encoders and loads the round's base model; every round, at every site, the same inputs give
the same tensors. A long-lived worker keeps them in this process's memory (never on disk, never
shared with another process) so the next round's task at that site, or the next site of the same
round, skips the decryption, the Parquet decode, the encoding and the model's decryption.

* Keys name exactly what the value was computed from: federation, site, pinned version and the
  digest of the encoders and training spec (prepared tensors); federation, round and model digest
  (models). A stale entry cannot be returned for different inputs.
* Access is checked before every use, as without the cache: the site task refuses a withdrawn
  site (approval, grant) before it reads anything, cached or not.
* Bounded: ``COHORT_FL_CACHE_MB`` in all (LRU; 0 turns it off) and ``COHORT_FL_CACHE_SECONDS``
  since last use; a value bigger than a quarter of the bound is not kept.
* Values are shared, never copied: callers must not change them in place (the engine copies the
  base model into its module and reads the prepared tensors).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from django.conf import settings

T = TypeVar("T")


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    tensors = [getattr(value, a, None) for a in ("x_train", "y_train", "x_val", "y_val")]
    return sum(_nbytes(t) for t in tensors if t is not None) + 4096


class LRU:
    """A byte-bounded, time-bounded LRU map (thread-safe: the lease keeper runs beside the task)."""

    def __init__(self) -> None:
        self._items: OrderedDict[Any, tuple[Any, int, float]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @staticmethod
    def _limits() -> tuple[int, float]:
        mb = float(getattr(settings, "COHORT_FL_CACHE_MB", 512))
        return int(mb * 1024 * 1024), float(getattr(settings, "COHORT_FL_CACHE_SECONDS", 900))

    def get_or_compute(self, key: Any, compute: Callable[[], T]) -> T:
        limit, ttl = self._limits()
        now = time.monotonic()
        with self._lock:
            self._expire(now, ttl)
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                self._items[key] = (hit[0], hit[1], now)
                self.hits += 1
                return hit[0]  # type: ignore[no-any-return]
            self.misses += 1
        value = compute()
        size = _nbytes(value)
        if limit <= 0 or size > limit // 4:
            return value
        with self._lock:
            self._items[key] = (value, size, now)
            self._items.move_to_end(key)
            total = sum(s for _, s, _ in self._items.values())
            while total > limit and self._items:
                _, (_, s, _) = self._items.popitem(last=False)
                total -= s
        return value

    def _expire(self, now: float, ttl: float) -> None:
        for key in [k for k, (_, _, used) in self._items.items() if now - used > ttl]:
            del self._items[key]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._items)


PREPARED = LRU()
MODELS = LRU()


def inputs_digest(encoders: dict[str, Any], train_spec: dict[str, Any]) -> str:
    """What a site's prepared tensors depend on besides its data."""
    blob = json.dumps({"encoders": encoders, "train": train_spec}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()
