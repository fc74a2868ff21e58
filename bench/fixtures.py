"""Benchmark data: one tenant with an owner and ~50 members, created through the real services."""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.sessions.backends.db import SessionStore
from django.utils.crypto import get_random_string

from apps.accounts.models import User
from apps.accounts.services import user_create
from apps.common.context import Actor, context
from apps.tenancy.models import Membership, Role, Tenant
from apps.tenancy.scope import tenant_scope
from apps.tenancy.services import membership_add, tenant_create

SLUG = "bench"


@dataclass
class TenantFixture:
    tenant: Tenant
    owner: User
    members: list[Membership]  # not the owner's; all analysts to begin with
    session_key: str  # the owner's signed-in session (cookie ``sessionid``)
    csrf_secret: str  # sent as cookie ``csrftoken`` and header ``X-CSRFToken``

    def cookie_header(self) -> str:
        return f"sessionid={self.session_key}; csrftoken={self.csrf_secret}"


def seed_tenant(*, members: int = 50) -> TenantFixture:
    """Create (or reuse) tenant ``bench``: an owner plus ``members`` analysts; sign the owner in."""
    with context(actor=Actor.system("bench"), request_id="bench-seed-0001"):
        tenant = Tenant.objects.filter(slug=SLUG).first()
        if tenant is None:
            owner = user_create(email="owner@bench.example", password=None, full_name="Bench Owner")
            tenant = tenant_create(slug=SLUG, name="Benchmark tenant", owner=owner)
        owner = User.objects.get(email="owner@bench.example")
        with tenant_scope(tenant.pk):
            have = Membership.objects.exclude(user=owner).count()
            for i in range(have, members):
                user = user_create(email=f"member{i:03d}@bench.example", password=None, full_name=f"Member {i}")
                membership_add(tenant=tenant, actor_role=Role.OWNER, user=user, role=Role.ANALYST)
            ms = list(Membership.objects.exclude(user=owner).order_by("id"))
    session = SessionStore()
    session[SESSION_KEY] = str(owner.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = owner.get_session_auth_hash()
    session.create()
    assert session.session_key is not None
    return TenantFixture(
        tenant=tenant, owner=owner, members=ms, session_key=session.session_key, csrf_secret=get_random_string(32)
    )
