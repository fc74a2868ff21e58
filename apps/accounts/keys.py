"""API key format, generation and hashing (HMAC-SHA-256 with a server-side pepper)."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from django.conf import settings

KEY_RE = re.compile(r"^coh_([a-z0-9]{12})_([A-Za-z0-9_-]{43})$")


def generate() -> tuple[str, str]:
    """Return (full key, prefix). The key carries 256 bits of secret after its prefix."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    prefix = "".join(secrets.choice(alphabet) for _ in range(12))
    return f"coh_{prefix}_{secrets.token_urlsafe(32)}", prefix


def hash_key(key: str) -> str:
    return hmac.new(settings.COHORT_API_KEY_PEPPER.encode(), key.encode(), hashlib.sha256).hexdigest()


def parse(key: str) -> str | None:
    """Return the prefix of a well-formed key, else None."""
    m = KEY_RE.match(key)
    return m.group(1) if m else None


def matches(key: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_key(key), stored_hash)
