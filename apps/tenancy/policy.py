"""The permission matrix: which role may perform which action, and which API-key scope.

This module is the single source of truth; ``docs/permissions.md`` is generated from it
(``manage.py permissions_table``) and a table-driven test checks every (role, action) cell.
"""

from __future__ import annotations

from apps.tenancy.models import Role

O, A, N, I, U = Role.OWNER, Role.ADMIN, Role.ANALYST, Role.INTEGRATOR, Role.AUDITOR  # noqa: E741

# action: (roles allowed, API-key scope needed or None when API keys may never do it, description)
MATRIX: dict[str, tuple[frozenset[str], str | None, str]] = {
    "tenant.view": (frozenset({O, A, N, I, U}), "read", "See the tenant and its settings"),
    "tenant.update": (frozenset({O}), None, "Rename the tenant"),
    "member.list": (frozenset({O, A, N, U}), "read", "List members and roles"),
    "member.add": (frozenset({O, A}), None, "Add an existing user as a member"),
    "member.change_role": (frozenset({O, A}), None, "Change a member's role (owners only for owner)"),
    "member.remove": (frozenset({O, A}), None, "Remove a member (never the last owner)"),
    "invitation.list": (frozenset({O, A}), None, "List invitations"),
    "invitation.create": (frozenset({O, A}), None, "Invite someone by e-mail"),
    "invitation.revoke": (frozenset({O, A}), None, "Revoke a pending invitation"),
    "apikey.list": (frozenset({O, A, I, U}), None, "List API keys (metadata only)"),
    "apikey.create": (frozenset({O, A, I}), None, "Create an API key (shown once)"),
    "apikey.revoke": (frozenset({O, A, I}), None, "Revoke an API key (integrators: their own)"),
    "audit.list": (frozenset({O, A, U}), "read", "Read the tenant's audit events"),
    "audit.export": (frozenset({O, U}), "read", "Export audit events (CSV/JSON); itself audited"),
    "audit.verify": (frozenset({O, A, U}), "read", "Verify the tenant's audit hash chain"),
    "dataset.list": (frozenset({O, A, N, I, U}), "read", "List datasets, versions, schemas and validation reports"),
    "dataset.create": (frozenset({O, A, I}), "write", "Create datasets and upload versions (multipart or resumable)"),
    "dataset.update": (frozenset({O, A, I}), "write", "Rename or describe a dataset"),
    "dataset.delete": (frozenset({O, A}), None, "Delete a dataset (soft; purged after retention)"),
    "dataset.pii_report": (frozenset({O, A}), None, "Read PII scan reports (masked examples only)"),
    "dataset.deidentify": (frozenset({O, A}), None, "Apply a column policy: derive a de-identified version"),
    "dataset.read_raw": (frozenset({O, A}), None, "Preview or download a raw version (every read audited)"),
    "dataset.download": (
        frozenset({O, A, N, I}),
        "read",
        "Preview or download a de-identified version (every download audited)",
    ),
    "grant.list": (frozenset({O, A, N, U}), "read", "List a dataset's grants to other tenants"),
    "grant.create": (frozenset({O, A}), None, "Grant another tenant process or download"),
    "grant.revoke": (frozenset({O, A}), None, "Revoke a grant (takes effect at once)"),
    "budget.view": (frozenset({O, A, N, I, U}), "read", "See a dataset's privacy budget and its ledger"),
    "budget.set": (frozenset({O}), None, "Set a dataset's (ε, δ) budget"),
    "budget.reserve": (frozenset({O, A, N, I}), "write", "Reserve, commit or release privacy budget"),
    "shared.list": (frozenset({O, A, N, I, U}), "read", "List datasets other tenants granted to this one"),
    "job.list": (frozenset({O, A, N, I, U}), "read", "List training jobs, their metrics and logs"),
    "job.create": (frozenset({O, A, N, I}), "write", "Start a training job on an own or process-granted dataset"),
    "job.cancel": (frozenset({O, A, N, I}), "write", "Cancel a training job (takes effect within one step)"),
    "model.list": (frozenset({O, A, N, I, U}), "read", "List trained model versions (spec, metrics, lineage)"),
    "model.download": (
        frozenset({O, A, N, I}),
        "read",
        "Download model weights (safetensors) or an export (TorchScript, ONNX); audited",
    ),
    "model.predict": (frozenset({O, A, N, I}), "write", "Batch predictions with a model version (small models)"),
    "federation.list": (
        frozenset({O, A, N, I, U}),
        "read",
        "List federations the tenant coordinates or takes part in, their rounds, sites and events",
    ),
    "federation.create": (
        frozenset({O, A, N, I}),
        "write",
        "Create, simulate, start or cancel a federation over own or federate-granted datasets",
    ),
    "federation.approve": (
        frozenset({O, A}),
        None,
        "Approve, reject or revoke an own dataset's place in another tenant's federation",
    ),
    "shared.download": (
        frozenset({O, A, N, I}),
        "read",
        "Preview or download a dataset granted with download (audited in both tenants)",
    ),
}

ROLES: tuple[str, ...] = tuple(r.value for r in Role)
ACTIONS: tuple[str, ...] = tuple(MATRIX)
# What an API key acts as: the integrator role, further limited by the key's scopes.
API_KEY_ROLE = Role.INTEGRATOR


def role_allows(role: str, action: str) -> bool:
    """True if ``role`` may perform ``action``. Unknown actions are refused (fail closed)."""
    entry = MATRIX.get(action)
    return bool(entry and role in entry[0])


def api_key_allows(scopes: list[str] | tuple[str, ...], action: str) -> bool:
    """True if an API key with ``scopes`` may perform ``action``.

    A key acts as an integrator; the action must name a scope, and a ``write`` scope implies
    ``read``.
    """
    entry = MATRIX.get(action)
    if not entry or entry[1] is None or API_KEY_ROLE not in entry[0]:
        return False
    needed = entry[1]
    return needed in scopes or (needed == "read" and "write" in scopes)


def markdown_table() -> str:
    header = "| action | " + " | ".join(ROLES) + " | API key scope | what it allows |"
    sep = "|" + "---|" * (len(ROLES) + 3)
    rows = [header, sep]
    for action, (roles, scope, desc) in MATRIX.items():
        cells = ["yes" if r in roles else "—" for r in ROLES]
        key = scope if (scope and API_KEY_ROLE in roles) else "—"
        rows.append(f"| `{action}` | " + " | ".join(cells) + f" | {key} | {desc} |")
    return "\n".join(rows)
