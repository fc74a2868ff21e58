"""Encryption at rest: ENC-1 (per-tenant binding), ENC-2 (KEK rotation), ENC-3 (data-key usage and
nonce hygiene), ENC-4 (crypto-shredding, backups included) and ENC-5 (no plaintext at rest: canary
scan of a database dump, the object store, Redis and the logs).

Figures: reports/ENC-1.json … reports/ENC-5.json.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command

from apps.datasets.models import DatasetVersion
from apps.tenancy.models import Role
from apps.tenancy.scope import platform_scope, tenant_scope
from apps.vault import services as vault
from apps.vault.models import DataKey
from tests.apps.datasets.helpers import create_dataset, deidentify, read_version, table_csv, upload_version
from tests.conftest import write_report
from workers.crypto import CryptoError, EncryptingWriter, encrypt_bytes

pytestmark = pytest.mark.django_db(transaction=True)


def _versions(tenant: Any) -> list[DatasetVersion]:
    with platform_scope():
        return list(DatasetVersion.all_tenants.filter(tenant=tenant, status="ready").select_related("data_key"))


def _two_tenants_with_data(
    make_tenant: Callable[..., Any], member: Callable[..., Any], api_client_for: Callable[..., Any], canary: str = ""
) -> tuple[Any, Any]:
    a, b = make_tenant(), make_tenant()
    for i, t in enumerate((a, b)):
        client = api_client_for(member(Role.OWNER, tenant=t))
        ds = create_dataset(client, t.slug, f"records-{i}")
        raw = upload_version(client, t.slug, ds, table_csv(30, canary=canary, seed=i), label="outcome")
        deidentify(client, t.slug, ds, raw["id"])
        upload_version(client, t.slug, ds, table_csv(20, seed=i + 5), label="outcome")
    return a, b


def test_enc1_per_tenant_binding_wrong_key_and_swaps_fail(
    make_tenant: Callable[..., Any], member: Callable[..., Any], api_client_for: Callable[..., Any]
) -> None:
    a, b = _two_tenants_with_data(make_tenant, member, api_client_for)
    va, vb = _versions(a), _versions(b)
    attempts: list[tuple[str, bool]] = []

    def attempt(what: str, fn: Callable[[], bytes]) -> None:
        try:
            fn()
            attempts.append((what, True))
        except CryptoError:
            attempts.append((what, False))

    # Sanity: each version reads back with its own key and name.
    for v in va + vb:
        assert len(read_version(v)) == v.size_bytes
    for v in va:
        attempt(f"A v{v.pk} with B's key", lambda v=v: read_version(v, key=vb[0].data_key))
        for w in vb:
            attempt(f"A v{v.pk} reading B's object {w.pk}", lambda v=v, w=w: read_version(v, name=w.storage_name))
    for v in va:  # swap within a tenant: same key, other object id in the AAD
        for w in va:
            if w.pk != v.pk:
                attempt(f"A v{v.pk} reading A's object {w.pk}", lambda v=v, w=w: read_version(v, name=w.storage_name))
    for v in vb:
        attempt(f"B v{v.pk} with A's key", lambda v=v: read_version(v, key=va[0].data_key))
    succeeded = [w for w, ok in attempts if ok]
    write_report(
        "ENC-1", {"attempts": len(attempts), "wrong_key_or_swap_decryptions_succeeded": len(succeeded)}, not succeeded
    )
    assert not succeeded, succeeded


def test_enc2_kek_rotation_rewraps_without_touching_data(
    make_tenant: Callable[..., Any], member: Callable[..., Any], api_client_for: Callable[..., Any]
) -> None:
    a, b = _two_tenants_with_data(make_tenant, member, api_client_for)
    # More data keys to re-wrap: retire and replace the active key a number of times.
    extra = 150
    with tenant_scope(a.pk):
        for _ in range(extra):
            vault.rotate(vault.active_key(a.pk), reason="test")
    objects = Path(settings.COHORT_OBJECT_DIR)
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in objects.rglob("*.enc")}
    old_kek = vault.key_provider().current_kek_id
    started = time.perf_counter()
    call_command("keys", "rotate-kek", "--retire-old", stdout=io.StringIO())
    elapsed = time.perf_counter() - started
    vault.reset_caches()
    provider = vault.key_provider()
    with platform_scope():
        keys = list(DataKey.all_tenants.all())
    assert provider.current_kek_id != old_kek and old_kek not in provider.kek_ids()
    assert {k.kek_id for k in keys} == {provider.current_kek_id}
    unreadable = 0
    for v in _versions(a) + _versions(b):
        try:
            read_version(v)
        except CryptoError as exc:
            logging.getLogger(__name__).warning("unreadable after rotation: %r", exc)
            unreadable += 1
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in objects.rglob("*.enc")}
    write_report(
        "ENC-2",
        {
            "data_keys_rewrapped": len(keys),
            "objects": len(_versions(a) + _versions(b)),
            "objects_unreadable_after_rotation": unreadable,
            "stored_objects_changed": sum(before[p] != after.get(p) for p in before),
            "rotate_kek_seconds": round(elapsed, 3),
            "rewrap_seconds_per_1k_deks": round(elapsed / len(keys) * 1000, 3),
        },
        unreadable == 0 and before == after,
    )
    assert unreadable == 0
    assert before == after, "KEK rotation must not re-encrypt data"


def test_enc3_usage_counter_rotation_and_nonce_uniqueness(tenant: Any) -> None:
    # (a) 10^6 encryptions under one key: every nonce distinct, the counter exact.
    key, ctx = secrets.token_bytes(32), b"enc-3"
    counted = [0]

    def reserve(n: int) -> None:
        counted[0] += n

    nonces: set[bytes] = set()
    n = 1_000_000
    header = 29
    for i in range(n):
        blob = encrypt_bytes(i.to_bytes(4, "big"), key, ctx, reserve=reserve)
        nonces.add(blob[header : header + 12])
    duplicates = n - len(nonces)
    # (b) The database counter (a sequence per key, never rolled back) drives rotation.
    limit = 300
    with tenant_scope(tenant.pk), override_limit(limit):
        first = vault.active_key(tenant.pk)
        seen_keys = {first.pk}
        for _ in range(40):
            k = vault.active_key(tenant.pk, headroom=16)
            with open(os.devnull, "wb") as sink:
                w = EncryptingWriter(
                    sink, vault.material(k), b"ctx", frame_size=4096, reserve=vault.reserver(k), reserve_batch=8
                )
                w.write(b"x" * 4096 * 12)
                w.close()
            seen_keys.add(k.pk)
        usage = {pk: vault.used(DataKey.objects.get(pk=pk)) for pk in seen_keys}
    max_uses = max(usage.values())
    write_report(
        "ENC-3",
        {
            "encryptions_under_one_key": n,
            "duplicate_nonces": duplicates,
            "counter_after": counted[0],
            "db_counter_test": {"limit": limit, "keys_used": len(usage), "max_uses_per_key": max_uses},
            "production_limit": settings.COHORT_DEK_MAX_ENCRYPTIONS,
            "bound": 2**32,
        },
        duplicates == 0 and counted[0] == n and max_uses <= limit + 16 and settings.COHORT_DEK_MAX_ENCRYPTIONS < 2**32,
    )
    assert duplicates == 0 and counted[0] == n
    assert len(usage) > 1, "the key must have been rotated"
    assert max_uses <= limit + 16, usage


class override_limit:
    def __init__(self, limit: int) -> None:
        self.limit = limit

    def __enter__(self) -> None:
        self.old = settings.COHORT_DEK_MAX_ENCRYPTIONS
        settings.COHORT_DEK_MAX_ENCRYPTIONS = self.limit

    def __exit__(self, *exc: object) -> None:
        settings.COHORT_DEK_MAX_ENCRYPTIONS = self.old


def test_enc4_crypto_shredding_makes_every_copy_unreadable(
    make_tenant: Callable[..., Any], member: Callable[..., Any], api_client_for: Callable[..., Any]
) -> None:
    from tests.security.helpers import admin_connect
    from workers.crypto import WrappedKey

    a, b = _two_tenants_with_data(make_tenant, member, api_client_for)
    va = _versions(a)
    # A "backup" taken before the shred: the key rows and a copy of the object store.
    with admin_connect() as su:
        backup_keys = su.execute(
            "SELECT id, tenant_id, purpose, kek_id, wrapped FROM vault_datakey WHERE tenant_id = %s", [a.pk]
        ).fetchall()
    backup_dir = Path(settings.COHORT_TMP_DIR).parent / f"backup-{secrets.token_hex(4)}"
    shutil.copytree(settings.COHORT_OBJECT_DIR, backup_dir)
    try:
        call_command(
            "keys", "shred", "--tenant", a.slug, "--reason", "tenant left the platform", "--yes", stdout=io.StringIO()
        )
        readable = 0
        for v in va:
            try:
                read_version(v)
                readable += 1
            except CryptoError:
                pass
        # Restore the backup's key rows and objects: still nothing decrypts (the tenant secret is gone).
        restored = 0
        provider = vault.key_provider()
        for key_id, tenant_id, purpose, kek_id, wrapped in backup_keys:
            k = DataKey(
                pk=key_id,
                tenant_id=tenant_id,
                purpose=purpose,
                kek_id=kek_id,
                wrapped=bytes(wrapped),
                status="active",
                max_encryptions=1,
            )
            share = provider.unwrap(WrappedKey(kek_id=kek_id, blob=bytes(wrapped)), vault._wrap_context(k))
            assert len(share) == 32  # the KEK still opens the backup's wrap...
            try:
                vault._derive(tenant_id, share, vault._wrap_context(k))  # ...but the key cannot be derived
                restored += 1
            except CryptoError:
                pass
        still_b = sum(1 for v in _versions(b) if read_version(v))
        with pytest.raises(CryptoError), tenant_scope(a.pk):
            vault.active_key(a.pk)
    finally:
        shutil.rmtree(backup_dir, ignore_errors=True)
    write_report(
        "ENC-4",
        {
            "objects": len(va),
            "readable_objects_after_shred": readable,
            "backup_keys_usable_after_shred": restored,
            "other_tenant_objects_still_readable": still_b,
        },
        readable == 0 and restored == 0 and still_b == len(_versions(b)),
    )
    assert readable == 0 and restored == 0
    assert still_b == len(_versions(b))


def test_enc5_no_plaintext_at_rest_canary_scan(
    make_tenant: Callable[..., Any],
    member: Callable[..., Any],
    api_client_for: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from apps.common.ratelimit import redis_client
    from tests.conftest import _admin_db_url, _test_db_name

    caplog.set_level(logging.DEBUG)
    canary = "CANARY" + secrets.token_hex(8).upper()
    a, _b = _two_tenants_with_data(make_tenant, member, api_client_for, canary=canary)
    client = api_client_for(member(Role.OWNER, tenant=a))
    ds = create_dataset(client, a.slug, "bad-file")
    # A rejected upload whose bad rows carry the canary: the error must not echo it.
    bad = f"x,y\n1,2\n3,{canary},9\n".encode()
    r = client.post(f"/api/v1/tenants/{a.slug}/datasets/{ds}/versions/", {"file": _named(bad)}, format="multipart")
    assert r.status_code == 422 and canary not in r.content.decode()
    # Reads: preview and download of the de-identified version go through the logs too.
    hits: dict[str, int] = {}
    needle = canary.encode()
    # Positive control: the stored plaintext (once decrypted) does carry the canary, so a scan of the
    # ciphertext that finds nothing means something.
    raw_a = [v for v in _versions(a) if v.kind == "raw"]
    assert any(needle in read_version(v) for v in raw_a), "control: the canary must be in the data"
    # 1. PostgreSQL dump (schema + data, every table incl. the audit log).
    # The client must not be older than the server (embedded mode runs PostgreSQL 18 from its wheel;
    # the machine's pg_dump may be older): tests/processes.py picks one that matches.
    import psycopg

    from tests.processes import pg_tool, server_major

    dump_url = _admin_db_url(_test_db_name())
    with psycopg.connect(dump_url) as conn:
        dump_bin = pg_tool("pg_dump", server_major(conn))
    dump = subprocess.run([dump_bin, "--no-owner", dump_url], capture_output=True, check=True).stdout
    hits["postgres_dump"] = dump.count(needle)
    # 2. Object store and scratch space.
    store = 0
    for root in (settings.COHORT_OBJECT_DIR, settings.COHORT_TMP_DIR, settings.COHORT_KEY_DIR):
        for p in Path(root).rglob("*"):
            if p.is_file():
                store += p.read_bytes().count(needle)
    hits["object_store_and_tmp"] = store
    leftovers = [p for p in Path(settings.COHORT_TMP_DIR).rglob("*") if p.is_file()]
    hits["tmp_files_left"] = len(leftovers)
    # 3. Redis: every key and value of the database the app uses (cache, broker, channel layer).
    rc = redis_client()
    redis_hits = 0
    for key in rc.scan_iter(count=1000):
        redis_hits += key.count(needle)
        dumped = rc.dump(key)
        redis_hits += (dumped or b"").count(needle)
    hits["redis"] = redis_hits
    # 4. Logs of this process.
    hits["logs"] = sum(canary in rec.getMessage() for rec in caplog.records)
    total = sum(v for k, v in hits.items())
    write_report("ENC-5", {"canary_hits": hits, "total": total}, total == 0)
    assert total == 0, hits


def _named(data: bytes) -> Any:
    import io

    f = io.BytesIO(data)
    f.name = "bad.csv"
    return f
