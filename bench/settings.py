"""Benchmark settings: local settings plus the bare comparison endpoints, no DEBUG, no effective rate limit."""

from config.settings.local import *  # noqa: F403

DEBUG = False
ROOT_URLCONF = "bench.urls"
# The throttle still runs (one Redis INCR per request, as in production) but never refuses.
COHORT_API_RATE_PER_MINUTE = 1_000_000_000
LOGGING = {**LOGGING, "root": {"handlers": ["console"], "level": "WARNING"}}  # noqa: F405
# The benchmark harness migrates its scratch database itself and starts its servers with the same
# environment; a deployment never does (apps.tenancy.db.assert_safe_app_role).
COHORT_ALLOW_OWNER_DSN = True
