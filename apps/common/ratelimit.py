"""Atomic Redis counters for rate limits and login lockout (DRF's cache throttle races)."""

from __future__ import annotations

import time
from functools import lru_cache

import redis
from django.conf import settings
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

# INCR and set the expiry on first use in one atomic script; returns [count, ttl].
_INCR_SCRIPT = """
local c = redis.call('INCR', KEYS[1])
if c == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
local ttl = redis.call('PTTL', KEYS[1])
return {c, ttl}
"""


@lru_cache(maxsize=4)
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


def redis_client() -> redis.Redis:
    return _client(settings.REDIS_URL)


def hit(key: str, window_seconds: int) -> tuple[int, float]:
    """Count one hit in a fixed window; returns (count so far, seconds until the window ends)."""
    count, ttl_ms = redis_client().eval(_INCR_SCRIPT, 1, f"cohort:rl:{key}", int(window_seconds * 1000))
    return int(count), max(0.0, int(ttl_ms) / 1000)


def clear(key: str) -> None:
    redis_client().delete(f"cohort:rl:{key}")


class PrincipalRateThrottle(BaseThrottle):
    """Per principal (API key, user, or client IP) requests per minute, atomically counted."""

    def __init__(self) -> None:
        self._wait = 0.0

    def allow_request(self, request: Request, view: object) -> bool:
        limit = settings.COHORT_API_RATE_PER_MINUTE
        if limit <= 0:
            return True
        auth = request.auth
        if auth is not None and hasattr(auth, "prefix"):
            ident = f"key:{auth.prefix}"
        elif request.user and request.user.is_authenticated:
            ident = f"user:{request.user.pk}"
        else:
            ident = f"ip:{request.META.get('REMOTE_ADDR', '?')}"
        window = int(time.time() // 60)
        count, ttl = hit(f"api:{ident}:{window}", 60)
        if count > limit:
            self._wait = ttl or 1.0
            return False
        return True

    def wait(self) -> float | None:
        return self._wait or None
