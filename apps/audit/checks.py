"""System checks for audit settings (retention must cover HIPAA's six years; the checkpoint keys are
well-formed and belong together)."""

from typing import Any

from django.conf import settings
from django.core.checks import Error, register

MIN_RETENTION_DAYS = 6 * 366  # 45 CFR 164.316(b)(2)(i): six years, counted generously


@register()
def audit_retention_check(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    days = settings.COHORT_AUDIT_RETENTION_DAYS
    if days < MIN_RETENTION_DAYS:
        return [
            Error(
                f"COHORT_AUDIT_RETENTION_DAYS={days} is below the six-year minimum ({MIN_RETENTION_DAYS})",
                id="cohort.audit.E001",
            )
        ]
    return []


@register()
def audit_keys_check(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """The audit keys, where set, are Ed25519 keys, and the public key is the signing key's."""
    from apps.audit.verification import CheckpointError, public_key_b64, trusted_public_key

    errors: list[Error] = []
    derived = None
    if settings.COHORT_AUDIT_SIGNING_KEY:
        try:
            derived = public_key_b64()
        except CheckpointError as exc:
            errors.append(Error(str(exc), id="cohort.audit.E002"))
    if settings.COHORT_AUDIT_PUBLIC_KEY:
        try:
            configured = trusted_public_key()
        except CheckpointError as exc:
            errors.append(Error(str(exc), id="cohort.audit.E003"))
        else:
            if derived is not None and configured != derived:
                errors.append(
                    Error(
                        "COHORT_AUDIT_PUBLIC_KEY is not the public key of COHORT_AUDIT_SIGNING_KEY",
                        id="cohort.audit.E004",
                    )
                )
    return errors
