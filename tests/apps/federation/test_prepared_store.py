"""Prepared tensors cached encrypted (issue 11): any worker's next task at a site reads them instead
of the version, they decrypt to exactly the tensors the version gives, the bytes at rest are
ciphertext, a damaged entry is recomputed, and they go when the site drops and when the federation
ends. The site tasks and ``advance`` run here, as the workers would run them."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from apps.datasets.models import DatasetVersion
from apps.datasets.storage import context_for, object_storage
from apps.federation.models import Federation, FederationSite, PreparedCache, SiteRound
from apps.federation.services import prepared_store, rounds, site_cache
from apps.federation.services.storage import KIND, object_id
from apps.tenancy.scope import tenant_scope
from apps.vault import services as vault
from apps.vault.models import DataKey
from apps.vault.services import ShreddedError
from tests.apps.federation.conftest import SPEC, approve_all, create_federation
from workers.crypto import IntegrityError as CryptoIntegrityError
from workers.crypto import decrypt_bytes
from workers.federated.spec import FederationSpec

pytestmark = pytest.mark.django_db(transaction=True)


def _rows(lab_id: int, fed_id: int) -> list[PreparedCache]:
    with tenant_scope(lab_id):
        return list(PreparedCache.objects.filter(federation_id=fed_id).order_by("site_id"))


def _run_open_slots(lab_id: int, fed_id: int) -> list[str]:
    with tenant_scope(lab_id):
        slots = list(
            SiteRound.objects.filter(round__federation_id=fed_id, state=SiteRound.State.SELECTED).order_by("id")
        )
    return [rounds.run_site_round(lab_id, s.pk) for s in slots]


def _in_round_1(c: dict[str, Any], spec: dict[str, Any], **extra: Any) -> int:
    """A started federation whose round 0 ran here: round 1 is open. Its id."""
    lab = c["lab"]
    r = create_federation(c, spec=spec, **extra)
    assert r.status_code == 201, r.content
    fed_id = int(r.json()["id"])
    approve_all(c, fed_id)
    assert c["lab_client"].post(f"/api/v1/tenants/{lab.slug}/federations/{fed_id}/start/").status_code == 200
    assert _run_open_slots(lab.pk, fed_id) == ["submitted"] * 3  # round 0: statistics, from the version
    assert rounds.advance(lab.pk, fed_id) == "closed"
    return fed_id


def _cached(c: dict[str, Any], rounds_: int = 3) -> tuple[int, list[PreparedCache]]:
    """A federation (quorum 2 of 3) whose round 1 ran here: every site's tensors are kept."""
    fed_id = _in_round_1(c, {**SPEC, "rounds": rounds_, "quorum": 2}, min_sites=2)
    assert _run_open_slots(c["lab"].pk, fed_id) == ["submitted"] * 3
    rows = _rows(c["lab"].pk, fed_id)
    assert len(rows) == 3
    return fed_id, rows


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Site ids whose version a task decrypted and decoded; each task starts with an empty memory
    cache, as a task on another worker (or after a restart) would."""
    seen: list[int] = []
    real = rounds._load_table

    def counting(fed: Federation, site: FederationSite) -> Any:
        seen.append(site.pk)
        return real(fed, site)

    monkeypatch.setattr(rounds, "_load_table", counting)
    real_run = rounds.run_site_round

    def cold(tenant_id: int, slot_id: int) -> str:
        site_cache.PREPARED.clear()
        return real_run(tenant_id, slot_id)

    monkeypatch.setattr(rounds, "run_site_round", cold)
    return seen


def test_a_site_task_reads_its_version_once_and_the_cache_is_exact_and_encrypted(
    consortium: dict[str, Any], reads: list[int]
) -> None:
    c, lab = consortium, consortium["lab"]
    fed_id = _in_round_1(c, {**SPEC, "rounds": 2})
    reads.clear()
    assert _run_open_slots(lab.pk, fed_id) == ["submitted"] * 3  # round 1: encoded, then kept
    rows = _rows(lab.pk, fed_id)
    assert len(rows) == 3 and len(reads) == 3
    assert rounds.advance(lab.pk, fed_id) == "closed"
    assert _run_open_slots(lab.pk, fed_id) == ["submitted"] * 3  # round 2: from the cache
    assert len(reads) == 3, "round 2's tasks decrypted the versions again"

    # Exactly the tensors the version gives, and nothing readable at rest.
    from workers.training.data import prepare_with_encoders

    with tenant_scope(lab.pk):
        fed = Federation.objects.get(pk=fed_id)
        site = FederationSite.all_tenants.get(pk=rows[0].site_id)
        table, schema = rounds._load_table(fed, site)
    fresh = prepare_with_encoders(table, schema, FederationSpec.from_dict(fed.spec).train, fed.encoders)
    digest = prepared_store.inputs_digest(site, site_cache.inputs_digest(fed.encoders, fed.spec["train"]))
    assert rows[0].inputs_digest == digest
    cached = prepared_store.load(fed, site, digest)
    assert cached is not None
    for name in ("x_train", "y_train", "x_val", "y_val"):
        a, b = getattr(cached, name), getattr(fresh, name)
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert (cached.train_index, cached.val_index) == (fresh.train_index, fresh.val_index)
    assert (cached.classes, cached.feature_names, cached.input_info) == (
        fresh.classes,
        fresh.feature_names,
        fresh.input_info,
    )
    with object_storage().open(rows[0].storage_name, "rb") as f:
        raw = f.read()
    assert b"x_train" not in raw and b"cohort.prepared" not in raw and b"feature_names" not in raw

    # The final evaluation reads the cache too; then the federation ends: rows and objects are gone.
    before = len(reads)
    assert rounds.advance(lab.pk, fed_id) == "closed"
    assert _run_open_slots(lab.pk, fed_id) == ["submitted"] * 3
    assert len(reads) == before
    assert rounds.advance(lab.pk, fed_id) == "completed"
    assert _rows(lab.pk, fed_id) == []
    assert not any(object_storage().exists(row.storage_name) for row in rows)


def test_a_damaged_entry_is_recomputed_and_a_dropped_site_loses_its_entry(
    consortium: dict[str, Any], reads: list[int]
) -> None:
    c, lab = consortium, consortium["lab"]
    fed_id, rows = _cached(c)
    with tenant_scope(lab.pk):  # one entry's bytes no longer match their record; one has no salt
        PreparedCache.objects.filter(pk=rows[0].pk).update(sha256="0" * 64)
        PreparedCache.objects.filter(pk=rows[1].pk).update(salt="")  # as sealed before keys were derived
    assert rounds.advance(lab.pk, fed_id) == "closed"
    reads.clear()
    assert _run_open_slots(lab.pk, fed_id) == ["submitted"] * 3
    assert sorted(reads) == [rows[0].site_id, rows[1].site_id]  # recomputed; the third read the cache
    again = _rows(lab.pk, fed_id)
    assert len(again) == 3 and again[0].pk != rows[0].pk and again[0].sha256 == rows[0].sha256
    assert again[1].pk != rows[1].pk and again[1].salt
    assert not object_storage().exists(rows[0].storage_name) and not object_storage().exists(rows[1].storage_name)

    # The third hospital revokes its grant: the next round drops the site and its cached tensors.
    h = c["hospitals"][2]
    r = h["client"].delete(f"/api/v1/tenants/{h['tenant'].slug}/datasets/{h['dataset']}/grants/{h['grant']['id']}/")
    assert r.status_code in (200, 204), r.content
    outcome = rounds.advance(lab.pk, fed_id)
    with tenant_scope(lab.pk):
        assert outcome == "closed", Federation.objects.get(pk=fed_id).status_reason
    left = _rows(lab.pk, fed_id)
    dropped = next(x for x in again if x.site_id not in {y.site_id for y in left})
    assert len(left) == 2 and not object_storage().exists(dropped.storage_name)
    with tenant_scope(lab.pk):
        assert FederationSite.all_tenants.get(pk=dropped.site_id).active is False


def test_off_keeps_nothing(consortium: dict[str, Any], settings: Any) -> None:
    settings.COHORT_FL_PREPARED_STORE = False
    c, lab = consortium, consortium["lab"]
    fed_id = _in_round_1(c, {**SPEC, "rounds": 1})
    assert _run_open_slots(lab.pk, fed_id) == ["submitted"] * 3
    assert _rows(lab.pk, fed_id) == []


def test_the_cache_never_outlives_the_owners_key_and_a_flipped_byte_is_recomputed(
    consortium: dict[str, Any], reads: list[int]
) -> None:
    from apps.vault.services import shred_tenant

    c, lab = consortium, consortium["lab"]
    fed_id, rows = _cached(c)
    with object_storage().open(rows[1].storage_name, "rb") as f:  # one ciphertext byte flipped
        raw = bytearray(f.read())
    raw[len(raw) // 2] ^= 0x01
    object_storage().delete(rows[1].storage_name)
    from django.core.files.base import ContentFile

    object_storage().save(rows[1].storage_name, ContentFile(bytes(raw)))
    assert rounds.advance(lab.pk, fed_id) == "closed"
    reads.clear()
    assert _run_open_slots(lab.pk, fed_id) == ["submitted"] * 3
    assert reads == [rows[1].site_id]  # AEAD refused the damaged entry: recomputed from the version

    # Each entry is sealed under a key of its own, derived from the owner's version key.
    owner = c["hospitals"][0]["tenant"]
    with tenant_scope(lab.pk):
        site = FederationSite.all_tenants.get(pk=rows[0].site_id)
    with tenant_scope(owner.pk):
        version_key_id = DatasetVersion.objects.get(pk=site.version_id).data_key_id
    assert rows[0].key_id == version_key_id and len(bytes.fromhex(rows[0].salt)) == 32
    assert len({r.salt for r in rows}) == 3

    # The first hospital crypto-shreds its tenant: its site fails as without the cache, and the
    # entry still on disk is unreadable by anyone, the coordinator's key included.
    shred_tenant(owner.pk, reason="erasure request")
    assert rounds.advance(lab.pk, fed_id) == "closed"
    reads.clear()
    states = _run_open_slots(lab.pk, fed_id)
    with tenant_scope(lab.pk):
        slot = SiteRound.objects.filter(round__federation_id=fed_id, site_id=rows[0].site_id).order_by("-id").first()
    assert slot is not None and slot.state == "failed", (states, slot and slot.reason)
    assert reads == []  # the shredded site never reached its version; the others read the cache
    with tenant_scope(owner.pk), pytest.raises(ShreddedError):
        vault.material(DataKey.objects.get(pk=version_key_id))
    context = context_for(lab.pk, KIND, object_id(fed_id, f"prepared/site{site.pk}-{rows[0].inputs_digest[:16]}"))
    with object_storage().open(rows[0].storage_name, "rb") as f:
        sealed = f.read()
    with tenant_scope(lab.pk):
        coordinators = vault.material(vault.active_key(lab.pk))
    with pytest.raises(CryptoIntegrityError):
        decrypt_bytes(sealed, coordinators, context)
    # An entry sealed the old way (no salt: under the coordinator's key) is removed on sight, even
    # for a shredded owner (migration 0007 removed every such entry at deploy).
    with tenant_scope(lab.pk):
        PreparedCache.objects.filter(pk=rows[0].pk).update(salt="")
        fed = Federation.objects.get(pk=fed_id)
    assert prepared_store.load(fed, site, rows[0].inputs_digest) is None
    assert rows[0].pk not in {r.pk for r in _rows(lab.pk, fed_id)}


def test_a_task_that_finishes_after_the_federation_ended_keeps_nothing(
    consortium: dict[str, Any], reads: list[int]
) -> None:
    c, lab = consortium, consortium["lab"]
    fed_id = _in_round_1(c, {**SPEC, "rounds": 1})
    assert _run_open_slots(lab.pk, fed_id) == ["submitted"] * 3
    rows = _rows(lab.pk, fed_id)
    with tenant_scope(lab.pk):
        fed = Federation.objects.get(pk=fed_id)
        site = FederationSite.all_tenants.get(pk=rows[0].site_id)
    cached = prepared_store.load(fed, site, rows[0].inputs_digest)
    with tenant_scope(lab.pk):
        assert c["lab_client"].post(f"/api/v1/tenants/{lab.slug}/federations/{fed_id}/cancel/").status_code == 200
    rounds.advance(lab.pk, fed_id)
    with tenant_scope(lab.pk):
        assert Federation.objects.get(pk=fed_id).status == "cancelled"
    assert _rows(lab.pk, fed_id) == []
    # A slow task of the cancelled federation now tries to keep its tensors: refused, no orphan.
    assert prepared_store.save(fed, site, "late" + rows[0].inputs_digest[4:], cached) is False
    assert _rows(lab.pk, fed_id) == []


@pytest.mark.django_db(transaction=True, databases=["default", "owner", "platform"])
def test_migration_0007_purges_the_entries_sealed_before_keys_were_derived(
    consortium: dict[str, Any],
    reads: list[int],  # each task starts with an empty memory, so every site keeps its entry
) -> None:
    """Run as the table's owner, whom row-level security also filters (FORCE): every entry and its
    object goes."""
    import importlib

    from django.db import connections

    purge = importlib.import_module("apps.federation.migrations.0007_prepared_cache_salt").purge_coordinator_sealed
    fed_id, rows = _cached(consortium)
    owner = connections["owner"]
    with owner.schema_editor() as editor:
        purge(None, editor)
    owner.close()
    assert _rows(consortium["lab"].pk, fed_id) == []
    assert not any(object_storage().exists(r.storage_name) for r in rows)
