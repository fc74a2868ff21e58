"""Chain verification and signed checkpoints (Ed25519 over the heads of every chain)."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from django.conf import settings
from django.db import connections, transaction

from apps.audit.chain import VerifyResult, verify_rows
from apps.audit.models import AuditCheckpoint
from apps.audit.selectors import iter_chain_rows
from apps.tenancy.scope import get_db_context, set_db_context


class CheckpointError(ValueError):
    """A checkpoint file that is malformed, signed by another key, or tampered with."""


def _private_key() -> Ed25519PrivateKey:
    seed = base64.b64decode(settings.COHORT_AUDIT_SIGNING_KEY)
    if len(seed) != 32:
        raise CheckpointError("COHORT_AUDIT_SIGNING_KEY must be base64 of 32 bytes")
    return Ed25519PrivateKey.from_private_bytes(seed)


def public_key_b64() -> str:
    raw = _private_key().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def key_id(public_b64: str) -> str:
    return hashlib.sha256(base64.b64decode(public_b64)).hexdigest()[:16]


def heads_in_scope(using: str = "default") -> dict[str, tuple[int, str]]:
    with connections[using].cursor() as cur:
        cur.execute("SELECT chain, seq, head_hash FROM cohort_audit_heads()")
        return {c: (int(s), h) for c, s, h in cur.fetchall()}


def audit_verify(
    *, tenant_id: int | None = None, checkpoint: dict[str, Any] | None = None, using: str = "default"
) -> VerifyResult:
    """Verify one tenant's chain (``tenant_id``) or, with None, every chain (platform scope).

    ``checkpoint``: a verified checkpoint document (``checkpoint_load``) to detect truncation and
    wholesale rewrites that a self-consistent chain would hide.
    """
    chain = f"t{tenant_id}" if tenant_id is not None else None
    with transaction.atomic(using=using):
        previous = get_db_context(using)
        if tenant_id is None:
            set_db_context(using=using, platform=True)
        else:
            set_db_context(using=using, tenant_id=tenant_id, platform=False)
        heads = heads_in_scope(using)
        cp_chains = None
        if checkpoint is not None:
            cp_chains = {
                c: (int(v[0]), str(v[1])) for c, v in checkpoint["chains"].items() if chain is None or c == chain
            }
        result = verify_rows(iter_chain_rows(chain=chain, using=using), heads=heads, checkpoint=cp_chains)
        _restore(previous, using)
    return result


def _restore(previous: dict[str, str], using: str) -> None:
    """Put the RLS settings back as the caller had them (e.g. a console request in platform scope)."""
    set_db_context(
        using=using, platform=previous.get("app.platform") == "on", tenant_id=previous.get("app.tenant_id") or None
    )


def checkpoint_create(*, using: str = "default") -> dict[str, Any]:
    """Sign the current head of every chain; store it and return the exportable document."""
    with transaction.atomic(using=using):
        previous = get_db_context(using)
        set_db_context(using=using, platform=True)
        heads = heads_in_scope(using)
        payload = json.dumps(
            {
                "version": 1,
                "created_at": datetime.now(UTC).isoformat(),
                "chains": {c: [s, h] for c, (s, h) in sorted(heads.items())},
            },
            sort_keys=True,
            separators=(",", ":"),
        )
        signature = base64.b64encode(_private_key().sign(payload.encode())).decode()
        pub = public_key_b64()
        AuditCheckpoint.objects.using(using).create(payload=payload, signature=signature, key_id=key_id(pub))
        _restore(previous, using)
    return {"payload": payload, "signature": signature, "public_key": pub, "key_id": key_id(pub)}


def checkpoint_load(doc: dict[str, Any], *, trusted_public_key_b64: str | None = None) -> dict[str, Any]:
    """Check a checkpoint document's signature against the trusted key; return its payload."""
    try:
        payload, signature = doc["payload"], doc["signature"]
        if not isinstance(payload, str) or not isinstance(signature, str):
            raise CheckpointError("malformed checkpoint: payload and signature must be strings")
        trusted = trusted_public_key_b64 or public_key_b64()
        pub = Ed25519PublicKey.from_public_bytes(base64.b64decode(trusted))
        pub.verify(base64.b64decode(signature), payload.encode())
        data = json.loads(payload)
        if data.get("version") != 1 or not isinstance(data.get("chains"), dict):
            raise CheckpointError("unsupported checkpoint version")
        return data
    except InvalidSignature as exc:
        raise CheckpointError("checkpoint signature does not verify with the trusted key") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"malformed checkpoint: {exc}") from exc
