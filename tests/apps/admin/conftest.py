"""Fixtures for the compliance console: staff users with TOTP devices, and OTP logins."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice

from apps.audit.models import AuditEvent
from apps.tenancy.scope import platform_scope

PASSWORD = "correct-horse-battery"


def token_for(device: TOTPDevice) -> str:
    """The current TOTP code of ``device``, as an authenticator app would show it."""
    code = totp(device.bin_key, step=device.step, t0=device.t0, digits=device.digits, drift=device.drift)
    return f"{code:0{device.digits}d}"


def wrong_token_for(device: TOTPDevice) -> str:
    return f"{(int(token_for(device)) + 500_000) % 1_000_000:06d}"


def events(**filters: Any) -> list[AuditEvent]:
    """Audit events across every chain (platform scope), oldest first."""
    with platform_scope():
        return list(AuditEvent.all_tenants.filter(**filters).order_by("id"))


def admin_login(
    client: Client, user: Any, token: str | None = None, device: TOTPDevice | None = None, password: str = PASSWORD
) -> Any:
    data = {"username": user.email, "password": password, "next": "/admin/"}
    if token is not None:
        data["otp_token"] = token
    if device is not None:
        data["otp_device"] = device.persistent_id
    return client.post("/admin/login/", data)


def console_reachable(client: Client) -> bool:
    """True when the client's session gets the console index (not a redirect to the login)."""
    return client.get("/admin/").status_code == 200


@pytest.fixture
def make_staff(make_user: Callable[..., Any]) -> Callable[..., tuple[Any, TOTPDevice]]:
    """``make_staff(**user_kwargs)`` → (staff user, confirmed TOTP device)."""

    def make(**kwargs: Any) -> tuple[Any, TOTPDevice]:
        kwargs.setdefault("is_staff", True)
        user = make_user(**kwargs)
        device = TOTPDevice.objects.create(user=user, name="phone", confirmed=True)
        return user, device

    return make


@pytest.fixture
def staff_client(make_staff: Callable[..., tuple[Any, TOTPDevice]]) -> Callable[[], tuple[Client, Any]]:
    """``staff_client()`` → (a Client signed in to the console with password + TOTP, the staff user)."""

    def make() -> tuple[Client, Any]:
        user, device = make_staff()
        client = Client()
        response = admin_login(client, user, token_for(device))
        assert response.status_code == 302, response.content.decode()[:2000]
        assert console_reachable(client)
        return client, user

    return make
