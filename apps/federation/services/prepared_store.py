"""A site's prepared tensors, cached encrypted between its tasks (issue 11: "prepared tensors are
cached encrypted").

Every round, a site task decrypts the site's pinned version, decodes its Parquet and encodes it
with the federation's merged encoders; the same inputs give the same tensors. The worker's memory
(``site_cache``) keeps them for the next task *in that process*; this store keeps them for any
``fl`` worker, and across restarts:

* **Sealed under the owner's key**: each entry is framed AES-256-GCM (bound to the coordinator's
  tenant, the kind and the object id) under a key of its own, derived by HKDF from the data key
  of the site's pinned version (the owner's) with a fresh random salt kept on the row. The
  tensors are the owner's rows, encoded: once the owner's key is destroyed (a crypto-shred) no
  one, the platform included, can read them, whether or not the purge below has run. The
  plaintext never touches the disk (the ciphertext is spooled).
* **Keyed by what the tensors were computed from**: the site, its pinned version, and the digest
  of the encoders and the training spec (:func:`site_cache.inputs_digest`). A row for other
  inputs is never returned; a second writer of the same inputs loses the unique constraint and
  removes its object.
* **Read only after the task's access check**, exactly as the version itself: a withdrawn site's
  task stops before it reads anything, cached or not; the owner's key is fetched under the
  coordinator's live ``federate`` grant, as reading the version does.
* **Removed** with its object when the site is dropped (approval or grant gone) and when the
  federation ends, whatever the ending (after the transaction commits).
* **Authenticated**: ``open_decrypted`` checks every frame, and the safetensors bytes' SHA-256 is
  checked against the row. A missing or damaged object is logged, its row removed, and the
  tensors computed again from the version: the cache can cost time, never correctness.

``COHORT_FL_PREPARED_STORE`` (default on) turns it off.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import secrets
from typing import Any

import torch
from django.conf import settings
from django.db import IntegrityError, transaction

from apps.datasets.storage import EncryptedUpload, context_for, delete_object, object_key, open_decrypted
from apps.federation.models import Federation, FederationSite, PreparedCache
from apps.federation.services.storage import KIND, object_id
from apps.tenancy.scope import tenant_scope

logger = logging.getLogger(__name__)

TENSORS = ("x_train", "y_train", "x_val", "y_val")
FORMAT = "cohort.prepared/1"
# Bumped whenever the data path's encoding changes (prepare_with_encoders, site_split, tokenizers):
# entries outlive deploys, and an entry written by older code must not be read by newer code.
PREPARE_VERSION = "2026-12-07"
SALT_BYTES = 32


def enabled() -> bool:
    return bool(getattr(settings, "COHORT_FL_PREPARED_STORE", True))


def inputs_digest(site: FederationSite, tensors_digest: str) -> str:
    """The store's key for a site: the encoding code's version, its pinned version (id and content
    hash) and what the tensors were computed from besides the data (:func:`site_cache.inputs_digest`)."""
    blob = f"{PREPARE_VERSION}:{site.version_id}:{site.version_sha256}:{tensors_digest}"
    return hashlib.sha256(blob.encode()).hexdigest()


def _what(site_id: int, digest: str) -> str:
    return f"prepared/site{int(site_id)}-{digest[:16]}"


def _encode(prepared: Any) -> tuple[bytes, str]:
    from workers.training.weights import save_weights

    tensors = {name: getattr(prepared, name).contiguous() for name in TENSORS}
    tensors["train_index"] = torch.tensor(list(prepared.train_index), dtype=torch.int64)
    tensors["val_index"] = torch.tensor(list(prepared.val_index), dtype=torch.int64)
    meta = {
        "kind": prepared.kind,
        "problem": prepared.problem,
        "feature_names": list(prepared.feature_names),
        "classes": prepared.classes,
        "encoders": prepared.encoders,
        "input_info": prepared.input_info,
    }
    buf = io.BytesIO()
    digest = save_weights(tensors, buf, {"format": FORMAT, "prepared": json.dumps(meta, sort_keys=True)})
    return buf.getvalue(), digest


def _decode(data: bytes) -> Any:
    from workers.training.data import Prepared
    from workers.training.weights import load_weights

    tensors, meta = load_weights(data)
    if meta.get("format") != FORMAT:
        raise ValueError(f"not a prepared-tensor object ({meta.get('format')!r})")
    info = json.loads(meta["prepared"])
    return Prepared(
        kind=info["kind"],
        problem=info["problem"],
        x_train=tensors["x_train"],
        y_train=tensors["y_train"],
        x_val=tensors["x_val"],
        y_val=tensors["y_val"],
        feature_names=info["feature_names"],
        classes=info["classes"],
        encoders=info["encoders"],
        input_info=info["input_info"],
        train_index=tensors["train_index"].tolist(),
        val_index=tensors["val_index"].tolist(),
    )


def _owner_key(fed: Federation, site: FederationSite) -> tuple[Any, bytes]:
    """The site's pinned version's data key (the owner's) and its material, fetched as reading the
    version itself does: under the coordinator's live grant; ShreddedError once it is destroyed."""
    from apps.datasets import selectors as dataset_selectors
    from apps.tenancy.models import Tenant
    from apps.vault import services as vault

    with tenant_scope(fed.tenant_id):
        version = site.version
        assert version is not None
        key = dataset_selectors.version_key(consumer=Tenant(pk=fed.tenant_id), version=version, permission="federate")
        return key, vault.material(key)


def load(fed: Federation, site: FederationSite, digest: str) -> Any | None:
    """The cached tensors for these inputs, or None (never cached, or unreadable: then removed).
    Raises what reading the version would raise when the owner's key is gone."""
    if not enabled():
        return None
    with tenant_scope(fed.tenant_id):
        row = PreparedCache.objects.filter(site=site, inputs_digest=digest).first()
        if row is None:
            return None
    if not row.salt:  # sealed under the coordinator's key, before keys were derived: never read
        _remove(fed, row)
        return None
    _key, material = _owner_key(fed, site)  # raises as the version's own read would
    try:  # the transfer and decryption outside any transaction
        oid = object_id(fed.pk, _what(site.pk, digest))
        own = object_key(material, bytes.fromhex(row.salt), context_for(fed.tenant_id, KIND, oid))
        with open_decrypted(fed.tenant_id, KIND, oid, row.storage_name, None, material=own) as reader:
            data = bytes(reader.read())
        if hashlib.sha256(data).hexdigest() != row.sha256:
            raise ValueError("the cached bytes' SHA-256 differs from the recorded one")
        return _decode(data)
    except Exception:
        logger.warning("prepared tensors of site %s (federation %s) unreadable; recomputing", site.pk, fed.pk,
                       exc_info=True)  # fmt: skip
        _remove(fed, row)
        return None


def _remove(fed: Federation, row: PreparedCache) -> None:
    with tenant_scope(fed.tenant_id):
        PreparedCache.objects.filter(pk=row.pk).delete()
        _delete_after_commit([row.storage_name])


def save(fed: Federation, site: FederationSite, digest: str, prepared: Any) -> bool:
    """Keep ``prepared`` for the next task at this site. False (and nothing kept) when it is off,
    when another task kept the same inputs first, or when the federation ended or the site was
    dropped meanwhile (a slow task must not leave an entry that no purge will see)."""
    if not enabled():
        return False
    key, material = _owner_key(fed, site)
    data, sha = _encode(prepared)
    what = _what(site.pk, digest)
    salt = secrets.token_bytes(SALT_BYTES)  # a key of this entry's own: its frames alone are sealed under it
    oid = object_id(fed.pk, what)
    own = object_key(material, salt, context_for(fed.tenant_id, KIND, oid))
    up = EncryptedUpload(fed.tenant_id, KIND, oid, size_hint=len(data), sealed_under=(key, own), digest=False)
    up.write(data)
    name = up.finish().name
    try:
        with tenant_scope(fed.tenant_id), transaction.atomic():
            # The federation's row lock orders this after a finish_locked or _drop_withdrawn that
            # holds it: then the status or the site's flag says no, and nothing is kept.
            running = Federation.objects.select_for_update().filter(pk=fed.pk, status=Federation.Status.RUNNING)
            if not running.exists() or not FederationSite.all_tenants.filter(pk=site.pk, active=True).exists():
                raise _Ended
            PreparedCache.objects.create(
                tenant_id=fed.tenant_id,
                federation=fed,
                site=site,
                inputs_digest=digest,
                storage_name=name,
                key=key,
                salt=salt.hex(),
                sha256=sha,
                plaintext_bytes=len(data),
            )
    except (IntegrityError, _Ended):  # kept by a concurrent task, or no longer wanted
        delete_object(name)
        return False
    return True


class _Ended(Exception):
    """The federation ended or the site was dropped while the tensors were being kept."""


def purge(fed: Federation, site: FederationSite | None = None) -> int:
    """Remove the cached tensors of ``site`` (or of every site) of ``fed``: rows now, objects after
    the commit. In the coordinator's scope. Returns how many were removed."""
    with tenant_scope(fed.tenant_id):
        rows = PreparedCache.objects.filter(federation=fed)
        if site is not None:
            rows = rows.filter(site=site)
        names = list(rows.values_list("storage_name", flat=True))
        rows.delete()
    _delete_after_commit(names)
    return len(names)


def _delete_after_commit(names: list[str]) -> None:
    def delete() -> None:
        for name in names:
            try:
                delete_object(name)
            except Exception:
                logger.warning("could not delete cached prepared tensors %s", name, exc_info=True)

    if names:
        transaction.on_commit(delete)
