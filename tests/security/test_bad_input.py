"""Bad input never reaches a 500: malformed or hostile requests get a 4xx with the error envelope
(``{"error": {"code", "message", "fields"}}``) and field errors where a field is at fault."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from apps.tenancy.models import Role
from tests.security.helpers import assert_error_shape

pytestmark = pytest.mark.django_db


@pytest.fixture
def owner_client(tenant: Any, member: Callable[..., Any], api_client_for: Callable[[Any], APIClient]) -> APIClient:
    return api_client_for(member(Role.OWNER))


def _raw(client: APIClient, method: str, path: str, body: bytes | str, content_type: str = "application/json") -> Any:
    return client.generic(method, path, body, content_type=content_type)


# (label, method, path suffix under /api/v1/tenants/<slug>/, raw JSON body, expected status, code, fields)
BODIES: list[tuple[str, str, str, str | bytes, int, str, tuple[str, ...]]] = [
    ("malformed JSON", "POST", "members/", '{"email": "a@b.c", ', 400, "malformed_request", ()),
    ("not JSON at all", "POST", "members/", "email=a@b.c", 400, "malformed_request", ()),
    ("empty body", "POST", "members/", "", 400, "validation_error", ("email", "role")),
    (
        "JSON array",
        "POST",
        "members/",
        '[{"email": "a@b.c", "role": "analyst"}]',
        400,
        "validation_error",
        ("non_field_errors",),
    ),
    ("JSON string", "PATCH", "", '"rename"', 400, "validation_error", ("non_field_errors",)),
    ("JSON null", "PATCH", "", "null", 400, "validation_error", ()),
    (
        "wrong types",
        "POST",
        "members/",
        '{"email": 123, "role": ["owner"]}',
        400,
        "validation_error",
        ("email", "role"),
    ),
    (
        "wrong types (key)",
        "POST",
        "api-keys/",
        '{"name": {"x": 1}, "scopes": "read"}',
        400,
        "validation_error",
        ("name", "scopes"),
    ),
    (
        "bool for int",
        "POST",
        "invitations/",
        '{"email": "a@b.c", "role": "analyst", "ttl_days": true}',
        400,
        "validation_error",
        ("ttl_days",),
    ),
    (
        "int out of range",
        "POST",
        "invitations/",
        '{"email": "a@b.c", "role": "analyst", "ttl_days": 99999}',
        400,
        "validation_error",
        ("ttl_days",),
    ),
    (
        "huge int literal",
        "POST",
        "invitations/",
        '{"email": "a@b.c", "role": "analyst", "ttl_days": 1' + "0" * 5000 + "}",
        400,
        "malformed_request",
        (),
    ),
    (
        "NaN",
        "POST",
        "invitations/",
        '{"email": "a@b.c", "role": "analyst", "ttl_days": NaN}',
        400,
        "malformed_request",
        (),
    ),
    (
        "unknown fields",
        "POST",
        "members/",
        '{"email": "a@b.c", "role": "analyst", "tenant_id": 1, "x": 2}',
        400,
        "validation_error",
        ("tenant_id", "x"),
    ),
    ("null byte in string", "PATCH", "", '{"name": "a\\u0000b"}', 400, "validation_error", ("name",)),
    (
        "null byte in email",
        "POST",
        "members/",
        '{"email": "a\\u0000@b.c", "role": "analyst"}',
        400,
        "validation_error",
        ("email",),
    ),
    ("very long string", "PATCH", "", json.dumps({"name": "x" * 100_000}), 400, "validation_error", ("name",)),
    (
        "very long list",
        "POST",
        "api-keys/",
        json.dumps({"name": "k", "scopes": ["read"] * 10_000}),
        400,
        "validation_error",
        ("scopes",),
    ),
    ("bad choice", "POST", "api-keys/", '{"name": "k", "scopes": ["admin"]}', 400, "validation_error", ("scopes.0",)),
    (
        "bad datetime",
        "POST",
        "api-keys/",
        '{"name": "k", "scopes": ["read"], "expires_at": "tomorrow"}',
        400,
        "validation_error",
        ("expires_at",),
    ),
    (
        "datetime out of range",
        "POST",
        "api-keys/",
        '{"name": "k", "scopes": ["read"], "expires_at": "0001-01-01T00:00:00-05:00"}',
        400,
        "validation_error",
        ("expires_at",),
    ),
    ("deeply nested arrays", "POST", "members/", "[" * 100_000 + "]" * 100_000, 400, "malformed_request", ()),
    ("deeply nested objects", "POST", "members/", '{"a":' * 50_000 + "1" + "}" * 50_000, 400, "malformed_request", ()),
    (
        "invalid UTF-8",
        "POST",
        "members/",
        b'{"email": "\xff\xfe@b.c", "role": "analyst"}',
        400,
        "malformed_request",
        (),
    ),
    ("lone surrogate", "PATCH", "", '{"name": "\\ud800"}', 400, "validation_error", ("name",)),
]


@pytest.mark.parametrize(
    ("label", "method", "suffix", "body", "status", "code", "fields"), BODIES, ids=[b[0] for b in BODIES]
)
def test_bad_bodies(
    label: str,
    method: str,
    suffix: str,
    body: str | bytes,
    status: int,
    code: str,
    fields: tuple[str, ...],
    tenant: Any,
    owner_client: APIClient,
) -> None:
    r = _raw(owner_client, method, f"/api/v1/tenants/{tenant.slug}/{suffix}", body)
    error = assert_error_shape(r, status, fields=fields)
    assert error["code"] == code, error


def test_oversized_body_is_413(tenant: Any, owner_client: APIClient) -> None:
    size = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    assert size == 1024 * 1024
    body = json.dumps({"email": "a@b.c", "role": "analyst", "pad": "x" * (size + 1)})
    r = _raw(owner_client, "POST", f"/api/v1/tenants/{tenant.slug}/members/", body)
    assert assert_error_shape(r, 413)["code"] == "payload_too_large"
    # Just under the limit is parsed (and refused for the unknown field, not for its size).
    body = json.dumps({"email": "a@b.c", "role": "analyst", "pad": "x" * (size - 100)})
    r = _raw(owner_client, "POST", f"/api/v1/tenants/{tenant.slug}/members/", body)
    assert_error_shape(r, 400, fields=["pad"])


@pytest.mark.parametrize(
    "content_type",
    ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/plain", "application/xml"],
)
def test_non_json_bodies_are_415(content_type: str, tenant: Any, owner_client: APIClient) -> None:
    r = _raw(
        owner_client, "POST", f"/api/v1/tenants/{tenant.slug}/members/", "email=a%40b.c&role=analyst", content_type
    )
    assert assert_error_shape(r, 415)["code"] == "unsupported_media_type"


def test_form_post_through_the_client_helper_is_415(tenant: Any, owner_client: APIClient) -> None:
    r = owner_client.post(f"/api/v1/tenants/{tenant.slug}/members/", {"email": "a@b.c", "role": "analyst"})
    assert_error_shape(r, 415)


@pytest.mark.parametrize(
    "path",
    [
        "members/99999999999999999999/",  # 20 digits: the <pk> converter takes 1-18
        "members/9999999999999999999/",  # 19 digits
        "members/-1/",
        "members/1e3/",
        "members/0x10/",
        "api-keys/%00/",
        "invitations/１２/",  # full-width digits
        "audit-events/99999999999999999999/",
        "no-such-collection/",
    ],
)
def test_bad_ids_in_the_path_are_json_404(path: str, tenant: Any, owner_client: APIClient) -> None:
    r = owner_client.get(f"/api/v1/tenants/{tenant.slug}/{path}")
    assert assert_error_shape(r, 404)["code"] == "not_found"


def test_largest_routable_id_is_an_ordinary_404(tenant: Any, owner_client: APIClient) -> None:
    for path in ("members", "invitations", "api-keys", "audit-events"):
        r = owner_client.get(f"/api/v1/tenants/{tenant.slug}/{path}/999999999999999999/")
        assert r.json() == {"error": {"code": "not_found", "message": "Not found."}}, (path, r.content)


@pytest.mark.parametrize("slug", ["a%00b", "x" * 300, "..", "%2e%2e", "%ff"])
def test_bad_slugs_are_json_404(slug: str, owner_client: APIClient) -> None:
    r = owner_client.get(f"/api/v1/tenants/{slug}/members/")
    assert assert_error_shape(r, 404)["code"] == "not_found"


def _cursor(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    ("suffix", "query", "field"),
    [
        ("members/", {"cursor": "garbage"}, "cursor"),
        ("members/", {"cursor": _cursor("p=not-a-number")}, "cursor"),
        ("members/", {"cursor": _cursor("o=-5")}, "cursor"),
        ("members/", {"cursor": _cursor("r=maybe")}, "cursor"),
        ("invitations/", {"cursor": _cursor("p=1.5")}, "cursor"),
        ("members/", {"page_size": "0"}, "page_size"),
        ("members/", {"page_size": "-3"}, "page_size"),
        ("members/", {"page_size": "lots"}, "page_size"),
        ("audit-events/", {"cursor": _cursor("p=abc")}, "cursor"),
        ("audit-events/", {"page_size": "501"}, "page_size"),
        ("audit-events/", {"since": "garbage"}, "since"),
        ("audit-events/", {"until": "2024-13-45"}, "until"),
        ("audit-events/", {"since": "9999-12-31T23:59:59-05:00"}, "since"),
        ("audit-events/", {"outcome": "bogus"}, "outcome"),
        ("audit-events/", {"actor_type": "robot"}, "actor_type"),
        ("audit-events/", {"action": "a\x00b"}, "action"),
        ("audit-events/", {"action": "x" * 10_000}, "action"),
        ("audit-events/", {"tenant": "1"}, "tenant"),
        ("audit-events/export/", {"file_format": "xml"}, "file_format"),
        ("audit-events/export/", {"since": "yesterday"}, "since"),
    ],
)
def test_bad_query_parameters_are_field_errors(
    suffix: str, query: dict[str, str], field: str, tenant: Any, owner_client: APIClient
) -> None:
    r = owner_client.get(f"/api/v1/tenants/{tenant.slug}/{suffix}", query)
    assert assert_error_shape(r, 400, fields=[field])["code"] == "validation_error"


def test_a_valid_cursor_still_pages(tenant: Any, member: Callable[..., Any], owner_client: APIClient) -> None:
    for _ in range(3):
        member(Role.ANALYST)
    first = owner_client.get(f"/api/v1/tenants/{tenant.slug}/members/", {"page_size": 2}).json()
    assert len(first["results"]) == 2 and first["next"]
    second = owner_client.get(first["next"]).json()
    assert len(second["results"]) == 2
    assert not {m["id"] for m in first["results"]} & {m["id"] for m in second["results"]}


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"HTTP_IDEMPOTENCY_KEY": "\x01bad"}, 400),
        ({"HTTP_IDEMPOTENCY_KEY": "k" * 300}, 400),
        ({"HTTP_AUTHORIZATION": "Bearer"}, 401),
        ({"HTTP_AUTHORIZATION": "Bearer a b c"}, 401),
        ({"HTTP_AUTHORIZATION": "Bearer coh_short"}, 401),
        ({"HTTP_AUTHORIZATION": "Bearer coh_" + "a" * 12 + "_" + "b" * 43}, 401),
        ({"HTTP_AUTHORIZATION": "Bearer " + "\u00e9" * 100}, 401),
    ],
)
def test_bad_headers(headers: dict[str, str], status: int, tenant: Any, owner_client: APIClient) -> None:
    r = owner_client.post(
        f"/api/v1/tenants/{tenant.slug}/api-keys/", {"name": "k", "scopes": ["read"]}, format="json", **headers
    )
    assert_error_shape(r, status)


@pytest.mark.parametrize("method", ["PUT", "TRACE", "CONNECT", "PROPFIND"])
def test_unimplemented_methods_are_405(method: str, tenant: Any, owner_client: APIClient) -> None:
    r = owner_client.generic(method, f"/api/v1/tenants/{tenant.slug}/members/")
    assert assert_error_shape(r, 405)["code"] == "method_not_allowed"


@pytest.mark.parametrize("method", ["HEAD", "OPTIONS"])
def test_head_and_options_follow_read_permission(
    method: str, tenant: Any, member: Callable[..., Any], api_client_for: Callable[[Any], APIClient]
) -> None:
    owner, integrator = api_client_for(member(Role.OWNER)), api_client_for(member(Role.INTEGRATOR))
    for suffix in ("", "members/", "invitations/", "audit-events/"):
        assert owner.generic(method, f"/api/v1/tenants/{tenant.slug}/{suffix}").status_code == 200, suffix
    # An integrator may not list invitations, so may not HEAD/OPTIONS them either.
    assert integrator.generic(method, f"/api/v1/tenants/{tenant.slug}/invitations/").status_code == 403
    assert APIClient().generic(method, f"/api/v1/tenants/{tenant.slug}/members/").status_code == 401


def test_login_bad_input(make_user: Callable[..., Any]) -> None:
    client = APIClient(enforce_csrf_checks=True)
    token = client.get("/api/v1/auth/csrf/").json()["csrf_token"]
    client.credentials(HTTP_X_CSRFTOKEN=token)
    for body, fields in [
        ({"email": "not-an-email", "password": "x"}, ["email"]),
        ({"email": "a@b.c", "password": "x" * 5000}, ["password"]),
        ({"email": "a\x00@b.c", "password": "x\x00"}, ["email"]),
        ({"email": ["a@b.c"], "password": {"x": 1}}, ["email", "password"]),
        ({}, ["email", "password"]),
    ]:
        r = client.post("/api/v1/auth/login/", body, format="json")
        assert_error_shape(r, 400, fields=fields)
    r = client.generic("POST", "/api/v1/auth/login/", "[" * 50_000, content_type="application/json")
    assert_error_shape(r, 400)


def test_unknown_api_routes_are_json_404() -> None:
    for path in ("/api/v1/nope/", "/api/v2/tenants/", "/api/v1/tenants/x/members/1/extra/"):
        r = APIClient().get(path)
        assert r.json() == {"error": {"code": "not_found", "message": "Not found."}}, (path, r.content)
