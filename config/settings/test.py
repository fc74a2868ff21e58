"""Test settings: real PostgreSQL and Redis, fast hashers, fixed secrets."""

import os

os.environ.setdefault("DJANGO_SECRET_KEY", "test-secret-key-not-for-production-0123456789")
os.environ.setdefault("COHORT_API_KEY_PEPPER", "test-pepper")
# A fixed Ed25519 seed for tests only (base64 of 32 bytes).
os.environ.setdefault("COHORT_AUDIT_SIGNING_KEY", "dGVzdC1zaWduaW5nLWtleS0zMi1ieXRlcy1sb25nISE=")
os.environ.setdefault("COHORT_DB_POOL", "false")

from config.settings.base import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
COHORT_REQUIRE_ADMIN_OTP = True
STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}  # noqa: F405
