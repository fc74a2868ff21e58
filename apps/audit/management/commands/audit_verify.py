"""``manage.py audit_verify [--tenant SLUG] [--checkpoint FILE [--public-key B64|FILE]] [--json]``:
check the audit hash chains."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.audit.chain import VerifyResult
from apps.audit.models import AuditEvent
from apps.audit.verification import CheckpointError, audit_verify, checkpoint_load, key_id, trusted_public_key
from apps.tenancy.models import Tenant
from apps.tenancy.scope import platform_scope

EXIT_OK = 0
EXIT_TAMPERED = 1
EXIT_BAD_INPUT = 2


def read_public_key(value: str) -> str:
    """``--public-key``: a file holding the base64 key, or the base64 key itself; checked here."""
    path = Path(value)
    text = value
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"cannot read public key file {value}: {exc}", returncode=EXIT_BAD_INPUT)
    if not text.strip():
        raise CommandError("--public-key is empty", returncode=EXIT_BAD_INPUT)
    try:
        return trusted_public_key(text)
    except CheckpointError as exc:
        where = f"file {value}" if path.is_file() else "value"
        raise CommandError(
            f"--public-key {where} is not base64 of a 32-byte Ed25519 public key ({exc})", returncode=EXIT_BAD_INPUT
        )


def load_checkpoint_file(path: str, *, public_key: str | None = None) -> dict[str, Any]:
    """Read a checkpoint document and check its signature with the trusted key (``public_key``,
    else COHORT_AUDIT_PUBLIC_KEY, else the one derived from the signing key).

    Raises CommandError (exit 2) for an unreadable, malformed, forged or foreign-key file, and when
    no key to verify it with is available.
    """
    try:
        trusted = trusted_public_key(public_key)
    except CheckpointError as exc:
        raise CommandError(str(exc), returncode=EXIT_BAD_INPUT)
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise CommandError(f"cannot read checkpoint file {path}: {exc.strerror or exc}", returncode=EXIT_BAD_INPUT)
    except ValueError as exc:
        raise CommandError(f"checkpoint file {path} is not JSON: {exc}", returncode=EXIT_BAD_INPUT)
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), str) for k in ("payload", "signature")):
        raise CommandError(f"checkpoint file {path} is not a checkpoint document", returncode=EXIT_BAD_INPUT)
    try:
        data = checkpoint_load(doc, trusted_public_key_b64=trusted)
    except CheckpointError as exc:
        raise CommandError(f"checkpoint file {path} rejected: {exc}", returncode=EXIT_BAD_INPUT)
    return {**data, "key_id": key_id(trusted)}


class Command(BaseCommand):
    help = (
        "Verify the audit hash chains (every chain, or one tenant's), optionally against a signed "
        "checkpoint file, and print the first broken event of each chain. Exit status: 0 intact, "
        "1 tampering found, 2 bad input (unknown tenant, unreadable or forged checkpoint, no key to verify "
        "the checkpoint with)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", metavar="SLUG", default=None, help="Verify only this tenant's chain.")
        parser.add_argument(
            "--checkpoint",
            metavar="FILE",
            default=None,
            help="A checkpoint written by audit_checkpoint; catches truncation and wholesale rewrites.",
        )
        parser.add_argument(
            "--public-key",
            metavar="B64|FILE",
            default=None,
            help="The Ed25519 public key (base64, or a file holding it) to check the checkpoint's signature "
            "with: a key the auditor holds, not the server's configuration. Default: COHORT_AUDIT_PUBLIC_KEY, "
            "else the one derived from COHORT_AUDIT_SIGNING_KEY.",
        )
        parser.add_argument("--json", action="store_true", dest="as_json", help="Print the result as JSON.")

    def handle(
        self,
        *args: Any,
        tenant: str | None,
        checkpoint: str | None,
        public_key: str | None = None,
        as_json: bool,
        **options: Any,
    ) -> None:
        if public_key is not None and not checkpoint:
            raise CommandError(
                "--public-key verifies a checkpoint: give --checkpoint FILE too", returncode=EXIT_BAD_INPUT
            )
        # Read the file first: a forged checkpoint is refused before the database is touched.
        key = read_public_key(public_key) if public_key is not None else None
        cp = load_checkpoint_file(checkpoint, public_key=key) if checkpoint else None
        tenant_id = self._tenant_id(tenant) if tenant else None
        result = audit_verify(tenant_id=tenant_id, checkpoint=cp)
        slugs, event_ids = self._describe(result)
        report = {
            **result.as_dict(),
            "scope": f"tenant {tenant}" if tenant else "all chains",
            "checkpoint": {"file": checkpoint, "created_at": cp.get("created_at"), "key_id": cp["key_id"]}
            if cp
            else None,
            "problems": [
                {**p.as_dict(), "event_id": p.event_id or event_ids.get((p.chain, p.seq)), "tenant": slugs.get(p.chain)}
                for p in result.problems
            ],
        }
        if as_json:
            self.stdout.write(json.dumps(report, indent=2, sort_keys=True))
        else:
            self._print_summary(report)
        if not result.ok:
            raise CommandError(
                f"audit chain tampering detected in {len(result.problems)} chain(s)", returncode=EXIT_TAMPERED
            )

    def _tenant_id(self, slug: str) -> int:
        with platform_scope():
            found = Tenant.objects.filter(slug=slug).values_list("pk", flat=True).first()
        if found is None:
            raise CommandError(f"unknown tenant {slug!r}", returncode=EXIT_BAD_INPUT)
        return int(found)

    def _describe(self, result: VerifyResult) -> tuple[dict[str, str], dict[tuple[str, int], int]]:
        """Tenant slugs of the broken chains, and event ids for problems that name only a position."""
        if not result.problems:
            return {}, {}
        chains = {p.chain for p in result.problems}
        tenant_ids = {int(c[1:]): c for c in chains if c.startswith("t") and c[1:].isdigit()}
        event_ids: dict[tuple[str, int], int] = {}
        with platform_scope():
            rows = Tenant.objects.filter(pk__in=tenant_ids).values_list("pk", "slug")
            slugs = {tenant_ids[pk]: slug for pk, slug in rows}
            for p in result.problems:
                if p.event_id is None:
                    pk = AuditEvent.all_tenants.filter(chain=p.chain, seq=p.seq).values_list("pk", flat=True).first()
                    if pk is not None:
                        event_ids[(p.chain, p.seq)] = pk
        return slugs, event_ids

    def _print_summary(self, report: dict[str, Any]) -> None:
        cp = report["checkpoint"]
        against = f" against checkpoint {cp['file']} ({cp['created_at']})" if cp else ""
        self.stdout.write(
            f"Verified {report['num_events']} events in {report['num_chains']} chain(s) ({report['scope']}){against}."
        )
        if not report["problems"]:
            self.stdout.write(self.style.SUCCESS("OK: every chain is intact."))
            return
        self.stdout.write(self.style.ERROR(f"TAMPERED: {len(report['problems'])} chain(s) broken."))
        for p in report["problems"]:
            tenant = f" (tenant {p['tenant']})" if p["tenant"] else ""
            event = p["event_id"] if p["event_id"] is not None else "-"
            self.stdout.write(
                f"  chain={p['chain']}{tenant} first broken seq={p['seq']} kind={p['kind']} "
                f"event_id={event}: {p['message']}"
            )
