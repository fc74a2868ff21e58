"""``manage.py create_staff``: staff user + confirmed TOTP device, otpauth URL printed once, idempotent."""

from __future__ import annotations

import io
import re

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django_otp.plugins.otp_totp.models import TOTPDevice

from apps.accounts.models import User
from tests.apps.admin.conftest import admin_login, console_reachable, events, token_for

pytestmark = pytest.mark.django_db(transaction=True)


def _run(*args: str) -> str:
    out = io.StringIO()
    call_command("create_staff", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_create_staff_enrols_totp_and_is_idempotent():
    out = _run("--email", "Carol@Cohort.example", "--password", "a-long-staff-passphrase")
    user = User.objects.get(email="carol@cohort.example")
    assert user.is_staff and user.check_password("a-long-staff-passphrase")
    device = TOTPDevice.objects.get(user=user)
    assert device.confirmed
    url = re.search(r"otpauth://totp/\S+", out).group(0)
    assert "secret=" in url and "issuer=Cohort" in url and "Cohort%3Acarol%40cohort.example" in url
    assert re.search(r"Secret \(base32\): [A-Z2-7]{32}", out)
    assert [e.details_dict["is_staff"] for e in events(action="user.created")] == [True]
    assert len(events(action="staff.totp_enrolled")) == 1

    client = Client()
    admin_login(client, user, token_for(device), password="a-long-staff-passphrase")
    assert console_reachable(client)

    again = _run("--email", "carol@cohort.example")
    assert "otpauth://" not in again and TOTPDevice.objects.get(user=user).pk == device.pk
    assert len(events(action="user.created")) == 1

    rotated = _run("--email", "carol@cohort.example", "--reset-totp")
    assert "otpauth://" in rotated
    new = TOTPDevice.objects.get(user=user)
    assert new.pk != device.pk and new.key != device.key
    assert len(events(action="staff.totp_rotated")) == 1


def test_create_staff_generates_a_password_and_promotes_existing_users(make_user):
    out = _run("--email", "dave@cohort.example")
    password = re.search(r"Password \(shown once\): (\S+)", out).group(1)
    assert User.objects.get(email="dave@cohort.example").check_password(password)
    plain = make_user(email="erin@cohort.example")
    assert not plain.is_staff
    _run("--email", "erin@cohort.example")
    assert User.objects.get(pk=plain.pk).is_staff
    assert len(events(action="user.staff_granted")) == 1
    assert events(action="db.row_updated", target_type="accounts_user") == []
    with pytest.raises(CommandError):
        _run("--email", "frank@cohort.example", "--password", "short")
