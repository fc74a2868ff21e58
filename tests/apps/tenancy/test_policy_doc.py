"""docs/permissions.md shows exactly the matrix in apps/tenancy/policy.py."""

from pathlib import Path

from apps.tenancy import policy
from apps.tenancy.management.commands.permissions_table import render_into

DOC = Path(__file__).resolve().parents[3] / "docs" / "permissions.md"


def test_permissions_doc_is_generated_from_policy():
    text = DOC.read_text()
    assert render_into(text) == text, "run: manage.py permissions_table --write docs/permissions.md"


def test_unknown_actions_and_roles_are_refused():
    assert not policy.role_allows("owner", "no.such.action")
    assert not policy.role_allows("superhero", "tenant.view")
    assert not policy.api_key_allows(["read", "write"], "member.add")
    assert policy.api_key_allows(["write"], "tenant.view")
    assert not policy.api_key_allows([], "tenant.view")
