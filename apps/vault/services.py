"""Data keys: create, use (with counted encryptions), rotate, re-wrap under a new KEK, shred.

Key hierarchy: each data key is HKDF(share, salt = tenant shred secret). The share is stored in
the database wrapped by the platform KEK (``COHORT_KEK``: a keyring file by default, or a KMS
adapter); the tenant shred secret lives outside the database (``keystore``), itself wrapped by the
KEK. Data is encrypted with data keys in framed AES-256-GCM
(``workers.crypto``), with AAD binding tenant, object kind, object id and chunk index.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import connection, connections
from django.utils import timezone

from apps.audit.services import audit_record, audited_change
from apps.tenancy.scope import db_alias
from apps.vault.keystore import ShreddedError, TenantSecretStore
from apps.vault.models import DataKey
from workers.crypto import (
    KeyProvider,
    KeyUsageExhausted,
    WrappedKey,
    generate_data_key,
    load_provider,
    rewrap,
)

# A writer that found the key active may finish its object even if another writer crossed the
# rotation threshold meanwhile: this many extra encryptions are tolerated, never more.
IN_FLIGHT_GRACE = 1 << 24

_cache_lock = threading.Lock()
_material_cache: dict[tuple[int, str, str], bytes] = {}


@functools.cache
def key_provider() -> KeyProvider:
    spec = settings.COHORT_KEK or f"file:{Path(settings.COHORT_KEY_DIR) / 'keyring.json'}"
    if spec.startswith("file:"):
        Path(spec[5:]).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return load_provider(spec, create_missing=spec.startswith("file:"))


def secret_store() -> TenantSecretStore:
    return TenantSecretStore(Path(settings.COHORT_KEY_DIR) / "tenant-secrets.json", key_provider())


def reset_caches() -> None:
    """Forget cached providers and unwrapped keys (tests; after a shred or a KEK rotation)."""
    key_provider.cache_clear()
    with _cache_lock:
        _material_cache.clear()


def _wrap_context(key: DataKey) -> bytes:
    return f"cohort/dek/{key.tenant_id}/{key.pk}/{key.purpose}".encode()


def _create(tenant_id: int, purpose: str) -> DataKey:
    raw = generate_data_key()
    with audited_change():
        key = DataKey.objects.create(
            tenant_id=tenant_id, purpose=purpose, max_encryptions=settings.COHORT_DEK_MAX_ENCRYPTIONS
        )
        _derive(tenant_id, raw, _wrap_context(key), create=True)  # the tenant secret exists from now on
        outer = key_provider().wrap(raw, _wrap_context(key))
        key.kek_id, key.wrapped = outer.kek_id, outer.blob
        key.save(update_fields=["kek_id", "wrapped"])
        with connection.cursor() as cur:
            cur.execute("SELECT cohort_dek_counter_create(%s)", [key.pk])
        audit_record(
            action="key.created",
            tenant=tenant_id,
            target=key,
            details={"purpose": purpose, "kek_id": key.kek_id, "max_encryptions": key.max_encryptions},
        )
    return key


def _derive(tenant_id: int, share: bytes, context: bytes, *, create: bool = False) -> bytes:
    """The usable key: HKDF-SHA-256 of the stored (KEK-wrapped) key share, salted with the tenant's
    shred secret. Without the secret (after a shred) no copy of the share, backups included,
    yields the key; KEK rotation re-wraps the share alone."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    secret = secret_store().secret(tenant_id, create=create)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=secret, info=context).derive(share)


def used(key: DataKey) -> int:
    with connections[db_alias()].cursor() as cur:
        cur.execute("SELECT cohort_dek_used(%s)", [key.pk])
        return int(cur.fetchone()[0])


def active_key(tenant_id: int, purpose: str = DataKey.Purpose.DATA, *, headroom: int = 0) -> DataKey:
    """The tenant's active key for ``purpose``, created on first use. Data keys are rotated
    before ``headroom`` more encryptions could cross ``max_encryptions`` (pseudonym keys are never
    rotated: tokens must stay stable across versions)."""
    key = DataKey.objects.filter(tenant_id=tenant_id, purpose=purpose, status=DataKey.Status.ACTIVE).first()
    if key is None:
        if DataKey.objects.filter(tenant_id=tenant_id, status=DataKey.Status.DESTROYED).exists():
            raise ShreddedError("this tenant's keys were crypto-shredded")
        return _create(tenant_id, purpose)
    if purpose == DataKey.Purpose.DATA and used(key) + headroom >= key.max_encryptions:
        return rotate(key, reason="usage_limit")
    return key


def rotate(key: DataKey, *, reason: str) -> DataKey:
    """Retire ``key`` (it still decrypts) and create its successor."""
    with audited_change():
        key.status, key.retired_at = DataKey.Status.RETIRED, timezone.now()
        key.save(update_fields=["status", "retired_at"])
        audit_record(
            action="key.retired",
            tenant=key.tenant_id,
            target=key,
            details={"reason": reason, "encryptions": used(key), "max_encryptions": key.max_encryptions},
        )
    return _create(key.tenant_id, key.purpose)


def material(key: DataKey) -> bytes:
    """The key's raw bytes (cached per process; the cache is cleared by shred and rotate-kek)."""
    if key.status == DataKey.Status.DESTROYED or key.wrapped is None:
        raise ShreddedError("this key was destroyed")
    cache_key = (int(key.pk), key.kek_id, hashlib.sha256(bytes(key.wrapped)).hexdigest())
    with _cache_lock:
        hit = _material_cache.get(cache_key)
    if hit is not None:
        return hit
    share = key_provider().unwrap(WrappedKey(kek_id=key.kek_id, blob=bytes(key.wrapped)), _wrap_context(key))
    raw = _derive(key.tenant_id, share, _wrap_context(key))
    with _cache_lock:
        _material_cache[cache_key] = raw
    return raw


def reserver(key: DataKey) -> Callable[[int], None]:
    """The ``reserve`` callback of ``EncryptingWriter``: counts encryptions before they happen."""

    def reserve(n: int) -> None:
        with connection.cursor() as cur:
            cur.execute("SELECT cohort_dek_use(%s, %s)", [key.pk, n])
            total = int(cur.fetchone()[0])
        if total > key.max_encryptions + IN_FLIGHT_GRACE:
            raise KeyUsageExhausted(f"data key {key.pk} reached its encryption limit; retry to use a fresh key")

    return reserve


@dataclass
class RewrapResult:
    keys: int
    secrets: int
    kek_id: str
    seconds: float


def rewrap_all(provider: KeyProvider | None = None) -> RewrapResult:
    """Re-wrap every data key and tenant secret under the current KEK. Data is not touched.
    Runs in platform scope (all tenants)."""
    import time

    from apps.tenancy.scope import platform_scope

    provider = provider or key_provider()
    started = time.perf_counter()
    n = 0
    with platform_scope(), audited_change():
        keys = list(
            DataKey.all_tenants.exclude(status=DataKey.Status.DESTROYED).exclude(kek_id=provider.current_kek_id)
        )
        now = timezone.now()
        for key in keys:
            assert key.wrapped is not None  # destroyed keys are excluded above
            new = rewrap(WrappedKey(kek_id=key.kek_id, blob=bytes(key.wrapped)), provider, _wrap_context(key))
            key.kek_id, key.wrapped, key.rewrapped_at = new.kek_id, new.blob, now
        DataKey.all_tenants.bulk_update(keys, ["kek_id", "wrapped", "rewrapped_at"], batch_size=1000)
        n = len(keys)
        secret_tenants = secret_store().rewrap_all()
        secrets_n = len(secret_tenants)
        # One event in each tenant's own chain whose keys changed (its compliance officer sees it).
        per_tenant: dict[int, int] = {}
        for key in keys:
            per_tenant[key.tenant_id] = per_tenant.get(key.tenant_id, 0) + 1
        for tid in sorted(set(per_tenant) | set(secret_tenants)):
            audit_record(
                action="key.kek_rotated",
                tenant=tid,
                target_type="vault.datakey",
                details={
                    "data_keys_rewrapped": per_tenant.get(tid, 0),
                    "shred_key_rewrapped": tid in secret_tenants,
                    "kek_id": provider.current_kek_id,
                },
            )
        if not per_tenant and not secret_tenants:
            audit_record(
                action="key.kek_rotated", details={"data_keys_rewrapped": 0, "kek_id": provider.current_kek_id}
            )
    reset_caches()
    return RewrapResult(
        keys=n, secrets=secrets_n, kek_id=provider.current_kek_id, seconds=time.perf_counter() - started
    )


def shred_tenant(tenant_id: int, *, reason: str) -> int:
    """Crypto-shred: destroy the tenant's shred secret and every wrapped data key. Irreversible."""
    from apps.tenancy.scope import tenant_scope

    with tenant_scope(tenant_id), audited_change():
        keys = list(DataKey.objects.exclude(status=DataKey.Status.DESTROYED))
        now = timezone.now()
        for key in keys:
            key.status, key.wrapped, key.destroyed_at = DataKey.Status.DESTROYED, None, now
        DataKey.objects.bulk_update(keys, ["status", "wrapped", "destroyed_at"])
        secret_store().destroy(tenant_id)
        audit_record(action="key.shredded", tenant=tenant_id, details={"reason": reason[:500], "data_keys": len(keys)})
    reset_caches()
    return len(keys)
