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
                    sent = repr(case.body)[:200] if case.body is not None else "-"
                    details.append(f"{label} [{check.__name__}] {response.status_code}: {titles}; body {sent}")
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


# --- training specs: a DictField without a schema, so the generator above rarely reaches its rules -------


def _spec_paths() -> list[tuple[str, ...]]:
    """Every field of ``TrainSpec`` as a path (nested specs one level down)."""
    import dataclasses

    from workers.training.spec import TrainSpec

    paths: list[tuple[str, ...]] = []
    nested = {"model", "optimizer", "schedule", "early_stopping", "data"}
    sub = {f.name: f for f in dataclasses.fields(TrainSpec)}
    for name in sub:
        paths.append((name,))
    from workers.training.spec import DataSpec, EarlyStoppingSpec, ModelSpec, OptimizerSpec, ScheduleSpec

    for name, klass in zip(
        sorted(nested), (DataSpec, EarlyStoppingSpec, ModelSpec, OptimizerSpec, ScheduleSpec), strict=True
    ):
        paths += [(name, f.name) for f in dataclasses.fields(klass)]
    return paths


TINY_SPEC: dict[str, Any] = {"model": {"name": "logistic_regression", "params": {}}, "epochs": 1, "batch_size": 8}
# Found by this test (app bugs, reported): a non-string early-stopping metric and an integer too
# large for a float raise in ``TrainSpec.validate`` (AttributeError, OverflowError), and a NUL in
# model.params reaches PostgreSQL (jsonb refuses \u0000): each a 500.
SPEC_500_EXAMPLES: list[dict[str, Any]] = [
    {**TINY_SPEC, "early_stopping": {"metric": 5}},
    {**TINY_SPEC, "early_stopping": {"metric": ["loss"]}},
    {**TINY_SPEC, "optimizer": {"lr": 10**400}},
    {**TINY_SPEC, "optimizer": {"momentum": 10**400}},
    {**TINY_SPEC, "schedule": {"gamma": 10**400}},
    {**TINY_SPEC, "early_stopping": {"min_delta": 10**400}},
]


def test_api1_job_specs_are_400_never_500(
    tenant: Any, member: Callable[..., Any], api_client_for: Callable[..., Any]
) -> None:
    """POST jobs/ with a valid body whose spec has random values at random TrainSpec fields (and
    the bodies in ``SPEC_500_EXAMPLES``): 201 or a 400 field error, never a 500."""
    from hypothesis import example
    from hypothesis import strategies as st

    from tests.apps.datasets.helpers import create_dataset, deidentify, table_csv, upload_version
    from tests.security.helpers import assert_error_shape

    client = api_client_for(member(Role.OWNER))
    ds = create_dataset(client, tenant.slug, "api1 training")
    raw = upload_version(client, tenant.slug, ds, table_csv(12), label="outcome")
    deid = deidentify(client, tenant.slug, ds, raw["id"])["id"]
    url = f"/api/v1/tenants/{tenant.slug}/jobs/"

    leaf = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.integers(min_value=10**300, max_value=10**310),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=8),
        st.sampled_from(["loss", "val_accuracy", "cuda", "fp16", "RGB", "mlp", "sgd", "cosine"]),
    )
    value = st.recursive(
        leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=6
    )
    overrides = st.lists(st.tuples(st.sampled_from(_spec_paths()), value), min_size=1, max_size=4)

    def mutate(changes: list[tuple[tuple[str, ...], Any]]) -> dict[str, Any]:
        spec: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in TINY_SPEC.items()}
        for path, v in changes:
            if len(path) == 1:
                spec[path[0]] = v
            else:
                parent = spec.get(path[0])
                spec[path[0]] = {**(parent if isinstance(parent, dict) else {}), path[1]: v}
        return spec

    outcomes: Counter[int] = Counter()
    server_errors: list[str] = []

    def post(spec: dict[str, Any]) -> None:
        _reset_rate_limits()
        r = client.post(url, {"name": "fuzz", "dataset_version": deid, "spec": spec}, format="json")
        outcomes[r.status_code] += 1
        if r.status_code >= 500 or r.status_code not in (201, 400):
            server_errors.append(f"{r.status_code}: {spec!r}"[:300])
        elif r.status_code == 400:
            assert_error_shape(r, 400)

    for spec in SPEC_500_EXAMPLES:
        post(spec)

    @given(changes=overrides)
    @example(changes=[(("model", "params"), {"x": "a\x00b"})])
    @settings(
        max_examples=150,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(changes: list[tuple[tuple[str, ...], Any]]) -> None:
        post(mutate(changes))

    run()
    assert outcomes[201] and outcomes[400], outcomes  # both paths were reached
    assert not server_errors, "\n".join(server_errors[:30])
