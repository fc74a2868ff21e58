"""API-1: property-based tests of every OpenAPI operation with Schemathesis.

The schema is loaded from the running app (``/api/schema/``) and every operation is driven through
Django's WSGI handler in-process, signed in as a seeded tenant owner (session + CSRF), with the
tenant slug fixed to the seeded tenant so requests reach the handlers (object ids are generated; the
database restarts its sequences per test, so small ids hit real rows).

* positive data (``MAX_EXAMPLES_POSITIVE`` per operation): ``not_a_server_error``,
  ``response_schema_conformance``, ``status_code_conformance``;
* negative data (``MAX_EXAMPLES_NEGATIVE`` per operation): ``not_a_server_error``,
  ``negative_data_rejection``.

Every operation is driven, the multipart upload (``dataset_versions_upload``) and the
octet-stream chunk PUT (``uploads_put_chunk``) included: Schemathesis encodes their bodies from the
schema's media types, so none is excluded. The API rate limit is reset before each operation so
that examples reach the handlers instead of a 429 (``rate_limited_429`` in the figures).

Examples are derandomized (reproducible) and the generated ``Authorization`` header is dropped (it
would only ever be a garbage bearer token). Figures: reports/API-1.json.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from django.test import Client
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from apps.tenancy.models import Role
from apps.tenancy.scope import tenant_scope
from apps.tenancy.services import invitation_create
from tests.conftest import write_report

pytestmark = pytest.mark.django_db(transaction=True)

MAX_EXAMPLES_POSITIVE = 25
MAX_EXAMPLES_NEGATIVE = 15
MODES: list[tuple[GenerationMode, int, list[Callable[..., Any]]]] = [
    (
        GenerationMode.POSITIVE,
        MAX_EXAMPLES_POSITIVE,
        [not_a_server_error, response_schema_conformance, status_code_conformance],
    ),
    (GenerationMode.NEGATIVE, MAX_EXAMPLES_NEGATIVE, [not_a_server_error, negative_data_rejection]),
]


def _reset_rate_limits() -> None:
    from apps.common.ratelimit import redis_client

    client = redis_client()
    keys = list(client.scan_iter("cohort:rl:*", count=1000))
    if keys:
        client.delete(*keys)


class Session:
    """A signed-in owner's cookies and CSRF token; renewed after an operation signs it out."""

    def __init__(self, user: Any) -> None:
        self.user = user
        self.renew()

    def renew(self) -> None:
        client = Client()
        client.force_login(self.user)
        self.token = client.get("/api/v1/auth/csrf/").json()["csrf_token"]
        self.cookies = {"sessionid": client.cookies["sessionid"].value, "csrftoken": client.cookies["csrftoken"].value}


def _runner(
    strategy: Any,
    max_examples: int,
    label: str,
    checks: list[Callable[..., Any]],
    session: Session,
    examples: Counter[str],
    statuses: dict[str, Counter[int]],
    failures: dict[str, Counter[str]],
    details: list[str],
) -> Callable[[], None]:
    @given(case=strategy)
    @settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        case.headers.pop("Authorization", None)
        response = case.call(headers={"X-CSRFToken": session.token}, cookies=session.cookies)
        examples[label] += 1
        statuses[label][response.status_code] += 1
        for check in checks:
            try:
                case.validate_response(response, checks=[check])
            except FailureGroup as group:
                failures[check.__name__][label] += 1
                if len(details) < 30:
                    titles = "; ".join(f.title for f in group.exceptions)
                    details.append(f"{label} [{check.__name__}] {response.status_code}: {titles}")
        if "/auth/logout/" in case.operation.path and response.status_code == 204:
            session.renew()

    return run


def test_api1_schemathesis(tenant: Any, member: Callable[..., Any], api_key_for: Callable[..., str]) -> None:
    owner = member(Role.OWNER)
    for role in (Role.ADMIN, Role.ANALYST, Role.AUDITOR):
        member(role)
    with tenant_scope(tenant.pk):
        for i in range(3):
            invitation_create(
                tenant=tenant, actor_role=Role.OWNER, invited_by=owner, email=f"st{i}@example.org", role=Role.ANALYST
            )
    for _ in range(3):
        api_key_for(tenant)

    app = get_wsgi_application()
    schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", app)
    operations = [r.ok() for r in schema.get_all_operations()]
    # Signing out last keeps the session for the rest; it is renewed between modes anyway.
    operations.sort(key=lambda op: ("logout" in op.path, op.path, op.method))
    session = Session(owner)

    examples: Counter[str] = Counter()
    failures: dict[str, Counter[str]] = defaultdict(Counter)
    statuses: dict[str, Counter[int]] = defaultdict(Counter)
    details: list[str] = []
    not_generated: list[str] = []
    started = time.perf_counter()
    for mode, max_examples, checks in MODES:
        session.renew()
        for op in operations:
            _reset_rate_limits()  # ~40 requests per operation: the per-minute API limit must not answer them
            fixed = {"tenant_slug": tenant.slug} if "{tenant_slug}" in op.path else None
            strategy = op.as_strategy(generation_mode=mode, path_parameters=fixed)
            label = f"{mode.value} {op.label}"

            run = _runner(strategy, max_examples, label, checks, session, examples, statuses, failures, details)
            try:
                run()
            except Unsatisfiable:
                not_generated.append(label)  # e.g. no parameter to make invalid in negative mode
    seconds = time.perf_counter() - started

    per_check = {check.__name__: sum(failures[check.__name__].values()) for _, _, cs in MODES for check in cs}
    total_failures = sum(per_check.values())
    figures = {
        "operations": len(operations),
        "examples": sum(examples.values()),
        "examples_by_mode": {
            m.value: sum(v for k, v in examples.items() if k.startswith(m.value)) for m, _, _ in MODES
        },
        "max_examples_per_operation": {"positive": MAX_EXAMPLES_POSITIVE, "negative": MAX_EXAMPLES_NEGATIVE},
        "failures_per_check": per_check,
        "failures": total_failures,
        "failure_details": details,
        "operations_without_negative_cases": not_generated,
        "status_counts": dict(Counter(s for c in statuses.values() for s in c.elements())),
        "rate_limited_429": sum(c[429] for c in statuses.values()),
        "seconds": round(seconds, 1),
        "settings": "derandomize=True, phases=explicit+generate, session auth as tenant owner, tenant_slug fixed",
    }
    operations_run = {k.split(" ", 1)[1] for k in examples}
    ok = total_failures == 0 and len(operations_run) == len(operations)
    write_report("API-1", figures, ok)
    assert len(operations_run) == len(operations), sorted({op.label for op in operations} - operations_run)
    assert total_failures == 0, "\n".join(details)
