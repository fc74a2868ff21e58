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
from apps.tenancy.scope import db_alias, get_db_context, in_platform_scope, platform_scope, set_db_context


class CheckpointError(ValueError):
    """A checkpoint file that is malformed, signed by another key, or tampered with."""


class KeyMissing(CheckpointError):
    """This process holds no key for the operation (signing: the private key; verifying: a public one)."""


def _decode_key(value: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except ValueError as exc:
        raise CheckpointError(f"{what} is not base64") from exc
    if len(raw) != 32:
        raise CheckpointError(f"{what} must be base64 of 32 bytes (an Ed25519 key), got {len(raw)} bytes")
    return raw


def _private_key() -> Ed25519PrivateKey:
    if not settings.COHORT_AUDIT_SIGNING_KEY:
        raise KeyMissing(
            "COHORT_AUDIT_SIGNING_KEY is not set in this process: checkpoints are signed only where the "
            "signing key is held (the worker running audit.checkpoint_create), see docs/audit.md"
        )
    seed = _decode_key(settings.COHORT_AUDIT_SIGNING_KEY, "COHORT_AUDIT_SIGNING_KEY")
    return Ed25519PrivateKey.from_private_bytes(seed)


def public_key_b64() -> str:
    """The public half of this process's signing key (needs the private key)."""
    raw = _private_key().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def trusted_public_key(explicit: str | None = None) -> str:
    """The public key (base64) a checkpoint is verified with: ``explicit`` (an auditor's own copy,
    ``audit_verify --public-key``), else COHORT_AUDIT_PUBLIC_KEY, else derived from the signing key
    where this process holds it. Raises KeyMissing when there is none, CheckpointError when the
    chosen one is not an Ed25519 public key."""
    if explicit:
        _decode_key(explicit, "the public key")
        return explicit.strip()
    if settings.COHORT_AUDIT_PUBLIC_KEY:
        _decode_key(settings.COHORT_AUDIT_PUBLIC_KEY, "COHORT_AUDIT_PUBLIC_KEY")
        return str(settings.COHORT_AUDIT_PUBLIC_KEY).strip()
    if settings.COHORT_AUDIT_SIGNING_KEY:
        return public_key_b64()
    raise KeyMissing(
        "no public key to verify the checkpoint with: pass --public-key B64|FILE or set "
        "COHORT_AUDIT_PUBLIC_KEY (this process holds no COHORT_AUDIT_SIGNING_KEY to derive it from)"
    )


def key_id(public_b64: str) -> str:
    return hashlib.sha256(base64.b64decode(public_b64)).hexdigest()[:16]


def heads_in_scope(using: str | None = None) -> dict[str, tuple[int, str]]:
    """Chain heads visible here: the tenant in scope's chain, or every chain for the platform role."""
    with connections[using or db_alias()].cursor() as cur:
        cur.execute("SELECT chain, seq, head_hash FROM cohort_audit_heads()")
        return {c: (int(s), h) for c, s, h in cur.fetchall()}


def audit_verify(
    *, tenant_id: int | None = None, checkpoint: dict[str, Any] | None = None, using: str | None = None
) -> VerifyResult:
    """Verify one tenant's chain (``tenant_id``) or, with None, every chain (as the platform role).

    ``checkpoint``: a verified checkpoint document (``checkpoint_load``) to detect truncation and
    wholesale rewrites that a self-consistent chain would hide.
    """
    if tenant_id is None and using is None and not in_platform_scope():
        with platform_scope():
            return audit_verify(checkpoint=checkpoint, using=db_alias())
    using = using or db_alias()
    chain = f"t{tenant_id}" if tenant_id is not None else None
    with transaction.atomic(using=using):
        previous = get_db_context(using).get("app.tenant_id") or None
        set_db_context(using, tenant_id=tenant_id)  # None: no tenant, so the platform sees all heads
        heads = heads_in_scope(using)
        cp_chains = None
        if checkpoint is not None:
            cp_chains = {
                c: (int(v[0]), str(v[1])) for c, v in checkpoint["chains"].items() if chain is None or c == chain
            }
        result = verify_rows(iter_chain_rows(chain=chain, using=using), heads=heads, checkpoint=cp_chains)
        set_db_context(using, tenant_id=previous)
    return result


def checkpoint_create(*, using: str | None = None) -> dict[str, Any]:
    """Sign the current head of every chain (read as the platform role); store it and return the
    exportable document. Needs the signing key: only the process that signs holds it."""
    if using is None and not in_platform_scope():
        with platform_scope():
            return checkpoint_create(using=db_alias())
    using = using or db_alias()
    with transaction.atomic(using=using):
        previous = get_db_context(using).get("app.tenant_id") or None
        set_db_context(using, tenant_id=None)
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
        set_db_context(using, tenant_id=previous)
    return {"payload": payload, "signature": signature, "public_key": pub, "key_id": key_id(pub)}


def checkpoint_load(doc: dict[str, Any], *, trusted_public_key_b64: str | None = None) -> dict[str, Any]:
    """Check a checkpoint document's signature against the trusted key (``trusted_public_key``
    precedence); return its payload."""
    pub = Ed25519PublicKey.from_public_bytes(base64.b64decode(trusted_public_key(trusted_public_key_b64)))
    try:
        payload, signature = doc["payload"], doc["signature"]
        if not isinstance(payload, str) or not isinstance(signature, str):
            raise CheckpointError("malformed checkpoint: payload and signature must be strings")
        pub.verify(base64.b64decode(signature), payload.encode())
        data = json.loads(payload)
        if data.get("version") != 1 or not isinstance(data.get("chains"), dict):
            raise CheckpointError("unsupported checkpoint version")
        return data
    except InvalidSignature as exc:
        raise CheckpointError("checkpoint signature does not verify with the trusted key") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"malformed checkpoint: {exc}") from exc
