"""System checks for audit settings (retention must cover HIPAA's six years)."""

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
