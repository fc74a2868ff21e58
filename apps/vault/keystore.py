"""Tenant shred secrets: one random 32-byte secret per tenant, kept OUTSIDE the database.

Every data key is derived (HKDF) from a KEK-wrapped share in the database, salted with its
tenant's shred secret. Destroying a tenant's shred secret therefore makes every
copy of its wrapped data keys useless, including those in database backups taken before the
shred; that is what crypto-shredding needs and what a KEK shared by all tenants cannot give.

The default store is a JSON file next to the KEK keyring (mode 0600, updated under an exclusive
``flock`` and replaced atomically), itself wrapped by the KEK: a stolen store without the KEK is
useless. In a multi-host deployment point ``COHORT_KEY_DIR`` at shared storage, or put the
secrets in the KMS (one key per tenant) behind the same three calls.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from workers.crypto import CryptoError, KeyProvider, WrappedKey


def _context(tenant_id: int) -> bytes:
    return f"cohort/tenant-shred-secret/{tenant_id}".encode()


class ShreddedError(CryptoError):
    """The tenant's shred secret is gone: its data can never be decrypted again."""


class TenantSecretStore:
    def __init__(self, path: Path, provider: KeyProvider) -> None:
        self.path = path
        self.provider = provider

    @contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock_path = self.path.with_suffix(".lock")
        fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            data = json.loads(self.path.read_text()) if self.path.exists() else {"tenants": {}, "shredded": []}
            before = json.dumps(data, sort_keys=True)
            yield data
            if json.dumps(data, sort_keys=True) != before:
                tmp = self.path.with_suffix(".tmp")
                wfd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
                with os.fdopen(wfd, "w") as fh:
                    json.dump(data, fh, sort_keys=True)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.path)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def secret(self, tenant_id: int, *, create: bool = False) -> bytes:
        """The tenant's shred secret; created on first use when ``create``."""
        with self._locked() as data:
            entry = data["tenants"].get(str(tenant_id))
            if entry is None:
                if tenant_id in data.get("shredded", []):
                    raise ShreddedError(f"tenant {tenant_id} was crypto-shredded")
                if not create:
                    raise ShreddedError(f"tenant {tenant_id} has no shred secret")
                raw = secrets.token_bytes(32)
                wrapped = self.provider.wrap(raw, _context(tenant_id))
                data["tenants"][str(tenant_id)] = {
                    "kek_id": wrapped.kek_id,
                    "blob": base64.b64encode(wrapped.blob).decode(),
                }
                return raw
        wrapped = WrappedKey(kek_id=entry["kek_id"], blob=base64.b64decode(entry["blob"]))
        return self.provider.unwrap(wrapped, _context(tenant_id))

    def destroy(self, tenant_id: int) -> bool:
        """Forget the tenant's secret for good. True if there was one."""
        with self._locked() as data:
            existed = data["tenants"].pop(str(tenant_id), None) is not None
            shredded = set(data.get("shredded", []))
            shredded.add(tenant_id)
            data["shredded"] = sorted(shredded)
            return existed

    def rewrap_all(self) -> list[int]:
        """Re-wrap every secret under the provider's current KEK (KEK rotation); returns the
        tenant ids whose secret was re-wrapped."""
        from workers.crypto import rewrap

        n: list[int] = []
        with self._locked() as data:
            for tid, entry in data["tenants"].items():
                old = WrappedKey(kek_id=entry["kek_id"], blob=base64.b64decode(entry["blob"]))
                if old.kek_id == self.provider.current_kek_id:
                    continue
                new = rewrap(old, self.provider, _context(int(tid)))
                data["tenants"][tid] = {"kek_id": new.kek_id, "blob": base64.b64encode(new.blob).decode()}
                n.append(int(tid))
        return n

    def kek_ids_in_use(self) -> set[str]:
        with self._locked() as data:
            return {e["kek_id"] for e in data["tenants"].values()}
