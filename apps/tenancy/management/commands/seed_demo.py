"""Seed the demo: two tenants, one user per role, a compliance staff user with TOTP, an API key.

Idempotent: a second run changes nothing and prints the same credentials (kept in
``.cohort/demo-credentials.json``, git-ignored). Every write goes through the audited services.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from apps.accounts.models import User
from apps.accounts.services import api_key_create, user_create
from apps.audit.services import audit_record, audited_change
from apps.common.context import Actor
from apps.tenancy.models import Membership, Role, Tenant
from apps.tenancy.scope import tenant_scope
from apps.tenancy.services import tenant_create

SEED_ACTOR = Actor.system("seed_demo")
TENANTS = [("st-marys", "St Mary's Hospital"), ("northbank", "Northbank Clinical Research")]
PASSWORD = "cohort-demo-{role}"  # demo only; printed below


def _user(email: str, password: str, *, is_staff: bool = False) -> User:
    user = User.objects.filter(email=email).first()
    if user is None:
        user = user_create(
            email=email, password=password, full_name=email.split("@")[0].title(), is_staff=is_staff, actor=SEED_ACTOR
        )
    return user


def _membership(tenant: Tenant, user: User, role: str) -> None:
    with tenant_scope(tenant.pk):
        if Membership.objects.filter(user=user).exists():
            return
        with audited_change():
            m = Membership.objects.create(tenant=tenant, user=user, role=role)
            audit_record(
                action="member.added",
                tenant=tenant,
                actor=SEED_ACTOR,
                target=m,
                details={"user_id": user.pk, "role": role},
            )


class Command(BaseCommand):
    help = "Seed demo tenants, users (one per role), a TOTP compliance user and an API key (idempotent)."

    def handle(self, *args: Any, **options: Any) -> None:
        from django_otp.plugins.otp_totp.models import TOTPDevice

        creds_path = Path(settings.COHORT_STATE_DIR) / "demo-credentials.json"
        creds: dict[str, Any] = json.loads(creds_path.read_text()) if creds_path.exists() else {}
        tenants = {}
        for slug, name in TENANTS:
            tenant = Tenant.objects.filter(slug=slug).first() or tenant_create(slug=slug, name=name, actor=SEED_ACTOR)
            tenants[slug] = tenant
        main, partner = tenants["st-marys"], tenants["northbank"]
        users = {}
        for role in Role.values:
            users[role] = _user(f"{role}@st-marys.example", PASSWORD.format(role=role))
            _membership(main, users[role], role)
        partner_owner = _user("owner@northbank.example", PASSWORD.format(role="owner"))
        _membership(partner, partner_owner, Role.OWNER)
        staff = _user("compliance@cohort.example", PASSWORD.format(role="compliance"), is_staff=True)
        device = TOTPDevice.objects.filter(user=staff, confirmed=True).first()
        if device is None:
            device = TOTPDevice.objects.create(user=staff, name="demo authenticator", confirmed=True)
            audit_record(action="user.totp_enrolled", actor=SEED_ACTOR, target=staff)
        if "integrator_api_key" not in creds:
            with tenant_scope(main.pk):
                created = api_key_create(
                    tenant=main,
                    created_by=users[Role.INTEGRATOR],
                    name="demo integrator",
                    scopes=["read", "write"],
                    expires_at=None,
                )
            creds["integrator_api_key"] = created.secret
        creds["totp_url"] = device.config_url
        creds_path.parent.mkdir(parents=True, exist_ok=True)
        creds_path.write_text(json.dumps(creds, indent=2))
        creds_path.chmod(0o600)

        out = self.stdout.write
        out(self.style.SUCCESS("Demo seeded (idempotent). Sign in at http://127.0.0.1:8000/api/docs/ or /admin/"))
        out("  tenants: " + ", ".join(f"{t.slug} ({t.name})" for t in tenants.values()))
        for role, user in users.items():
            out(f"  {role:<11} {user.email:<28} password: {PASSWORD.format(role=role)}")
        out(f"  partner     {partner_owner.email:<28} password: {PASSWORD.format(role='owner')}")
        out(f"  compliance  {staff.email:<28} password: {PASSWORD.format(role='compliance')} + TOTP")
        out(f"  TOTP (add to an authenticator app): {device.config_url}")
        out(f"  integrator API key (st-marys, read+write): {creds['integrator_api_key']}")
        out(f"  (credentials saved in {creds_path})")
