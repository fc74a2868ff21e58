"""``manage.py keys``: key management for operators.

keys status                         KEKs, data keys per tenant and their usage
keys rotate-kek [--retire-old]      new KEK in the keyring, re-wrap every data key and tenant
                                    secret under it (data is not touched); optionally delete
                                    the old KEKs once nothing is wrapped by them
keys rewrap                         re-wrap under the current KEK (after rotating it in a KMS)
keys rotate-dek --tenant SLUG       retire the tenant's data key; new data uses a fresh one
keys shred --tenant SLUG --reason R --yes
                                    crypto-shred: destroy the tenant's keys; all its data,
                                    backups included, becomes unreadable. Irreversible.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.common.context import Actor, context
from apps.tenancy.models import Tenant
from apps.tenancy.scope import platform_scope, tenant_scope
from apps.vault import services
from apps.vault.models import DataKey
from workers.crypto import CryptoError, LocalKeyring


class Command(BaseCommand):
    help = "Key management: status, rotate-kek, rewrap, rotate-dek, shred."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        sub.add_parser("status")
        rk = sub.add_parser("rotate-kek")
        rk.add_argument("--retire-old", action="store_true", help="Delete old KEKs once nothing uses them")
        sub.add_parser("rewrap")
        rd = sub.add_parser("rotate-dek")
        rd.add_argument("--tenant", required=True)
        sh = sub.add_parser("shred")
        sh.add_argument("--tenant", required=True)
        sh.add_argument("--reason", required=True)
        sh.add_argument("--yes", action="store_true", help="Confirm: this cannot be undone")

    def handle(self, *args: Any, **opts: Any) -> None:
        with context(actor=Actor.system("manage.py keys")):
            getattr(self, "do_" + opts["action"].replace("-", "_"))(**opts)

    def _tenant(self, slug: str) -> Tenant:
        t = Tenant.objects.filter(slug=slug).first()
        if t is None:
            raise CommandError(f"no tenant {slug!r}")
        return t

    def do_status(self, **_: Any) -> None:
        provider = services.key_provider()
        with platform_scope():
            keys = list(DataKey.all_tenants.order_by("tenant_id", "id"))
            rows = [
                {
                    "tenant_id": k.tenant_id,
                    "key_id": k.pk,
                    "purpose": k.purpose,
                    "status": k.status,
                    "kek_id": k.kek_id,
                    "encryptions": services.used(k) if k.status != DataKey.Status.DESTROYED else None,
                    "max_encryptions": k.max_encryptions,
                }
                for k in keys
            ]
        out = {"current_kek": provider.current_kek_id, "keks": provider.kek_ids(), "data_keys": rows}
        self.stdout.write(json.dumps(out, indent=2, default=str))

    def do_rotate_kek(self, retire_old: bool = False, **_: Any) -> None:
        provider = services.key_provider()
        if not isinstance(provider, LocalKeyring) or provider.path is None:
            raise CommandError(
                "the KEK is not a local keyring file: rotate it in your KMS (or the environment), then run "
                "`manage.py keys rewrap`"
            )
        old = provider.current_kek_id
        new = provider.rotate(provider.path)
        result = services.rewrap_all(provider)
        self.stdout.write(
            f"KEK rotated {old} -> {new}; re-wrapped {result.keys} data keys and {result.secrets} tenant secrets "
            f"in {result.seconds:.3f}s (data untouched)"
        )
        if retire_old:
            with platform_scope():
                in_use = set(
                    DataKey.all_tenants.exclude(status=DataKey.Status.DESTROYED).values_list("kek_id", flat=True)
                )
            in_use |= services.secret_store().kek_ids_in_use()
            for kek in provider.kek_ids():
                if kek != provider.current_kek_id and kek not in in_use:
                    provider.retire(provider.path, kek)
                    self.stdout.write(f"retired KEK {kek}")
        services.reset_caches()

    def do_rewrap(self, **_: Any) -> None:
        try:
            result = services.rewrap_all()
        except CryptoError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"re-wrapped {result.keys} data keys and {result.secrets} tenant secrets under {result.kek_id}"
        )

    def do_rotate_dek(self, tenant: str, **_: Any) -> None:
        t = self._tenant(tenant)
        with tenant_scope(t.pk):
            key = services.active_key(t.pk, DataKey.Purpose.DATA)
            new = services.rotate(key, reason="operator")
        self.stdout.write(f"tenant {t.slug}: data key {key.pk} retired, {new.pk} active")

    def do_shred(self, tenant: str, reason: str, yes: bool = False, **_: Any) -> None:
        if not yes:
            raise CommandError("crypto-shredding cannot be undone: add --yes to confirm")
        if len(reason.strip()) < 10:
            raise CommandError("give a reason of at least 10 characters")
        t = self._tenant(tenant)
        n = services.shred_tenant(t.pk, reason=reason)
        self.stdout.write(f"tenant {t.slug}: {n} data keys destroyed; its data can no longer be decrypted")
