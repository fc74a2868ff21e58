"""Test settings: real PostgreSQL and Redis, fast hashers, fixed secrets."""

import os

os.environ.setdefault("DJANGO_SECRET_KEY", "test-secret-key-not-for-production-0123456789")
os.environ.setdefault("COHORT_API_KEY_PEPPER", "test-pepper")
# A fixed Ed25519 seed for tests only (base64 of 32 bytes).
os.environ.setdefault("COHORT_AUDIT_SIGNING_KEY", "dGVzdC1zaWduaW5nLWtleS0zMi1ieXRlcy1sb25nISE=")
os.environ.setdefault("COHORT_DB_POOL", "false")
os.environ.setdefault("COHORT_DB_CONTEXT_KEY", "dGVzdC1kYi1jb250ZXh0LWtleS0zMi1ieXRlcy1sb25nISE=")

# Keys, objects and scratch space of the test run, per test database (the run recreates both).
from config.env import LOCAL_STATE_DIR

_TEST_STATE = LOCAL_STATE_DIR / f"test-{os.environ.get('COHORT_TEST_DB', 'cohort_test')}"
os.environ.setdefault("COHORT_KEY_DIR", str(_TEST_STATE / "keys"))
os.environ.setdefault("COHORT_OBJECT_DIR", str(_TEST_STATE / "objects"))
os.environ.setdefault("COHORT_TMP_DIR", str(_TEST_STATE / "tmp"))
os.environ.setdefault("COHORT_CHECKPOINT_DIR", str(_TEST_STATE / "checkpoints"))
os.environ.setdefault("COHORT_KEK", "")
# A roomy pool and quotas: suites that start jobs are not throttled (scheduler tests set their own).
for _name in ("COHORT_POOL_CPU_SLOTS", "COHORT_QUOTA_CONCURRENT_JOBS", "COHORT_QUOTA_CPU_JOBS", "COHORT_POOL_FL_SLOTS",
              "COHORT_QUOTA_SITE_TASKS"):  # fmt: skip
    os.environ.setdefault(_name, "64")

from config.settings.base import *  # noqa: F403, E402

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
COHORT_REQUIRE_ADMIN_OTP = True
STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}  # noqa: F405
# The suite is also the migrate step (it creates and migrates its database as the owner).
COHORT_ALLOW_OWNER_DSN = True
