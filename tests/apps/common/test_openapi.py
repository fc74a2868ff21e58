"""The OpenAPI document is valid and generated without warnings; docs pages are served offline."""

import pytest
from django.core.management import call_command

pytestmark = pytest.mark.django_db


def test_schema_validates_without_warnings(tmp_path):
    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    text = out.read_text()
    assert "operationId: members_create" in text
    assert "ErrorBody" in text  # every operation documents the shared error envelope


def test_docs_pages_use_bundled_assets(client):
    r = client.get("/api/docs/")
    assert r.status_code == 200
    assert b"swagger-ui" in r.content and b"cdn." not in r.content
    assert client.get("/api/redoc/").status_code == 200


def test_health_endpoints(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200, r.content
    assert {k for k, v in r.json()["checks"].items() if v["ok"]} == {"database", "redis", "broker"}
