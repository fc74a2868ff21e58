"""Console login: TOTP required for staff, non-staff never get in, refusals are audited."""

from __future__ import annotations

import pytest
from django.test import Client

from tests.apps.admin.conftest import admin_login, console_reachable, events, token_for, wrong_token_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_staff_without_token_cannot_log_in(make_staff):
    user, device = make_staff()
    client = Client()
    r = admin_login(client, user)
    assert r.status_code == 200 and "Please enter your OTP token" in r.content.decode()
    assert not console_reachable(client)
    r = admin_login(client, user, wrong_token_for(device))
    assert r.status_code == 200
    assert not console_reachable(client)
    denied = events(action="auth.admin_login_denied")
    assert [e.details_dict["reason"] for e in denied] == ["otp_token_required", "otp_invalid_token"]
    assert events(action="auth.login") == []


def test_password_session_without_otp_is_not_enough(make_staff):
    user, _ = make_staff()
    client = Client()
    client.force_login(user)  # e.g. a session from the API login: password only
    r = client.get("/admin/audit/auditevent/")
    assert r.status_code == 302 and r["Location"].startswith("/admin/login/")


def test_someone_elses_device_is_refused(make_staff):
    user, _ = make_staff()
    _, other_device = make_staff()
    client = Client()
    r = admin_login(client, user, token_for(other_device), device=other_device)
    assert r.status_code == 200
    assert not console_reachable(client)


def test_non_staff_cannot_log_in_even_with_totp(make_staff):
    user, device = make_staff(is_staff=False)
    client = Client()
    r = admin_login(client, user, token_for(device))
    assert r.status_code == 200
    assert not console_reachable(client)
    client.force_login(user)
    assert not console_reachable(client)
    assert [e.details_dict["reason"] for e in events(action="auth.admin_login_denied")] == ["not_staff"]


def test_staff_with_totp_gets_in_and_login_is_audited(make_staff):
    user, device = make_staff()
    client = Client()
    code = token_for(device)
    r = admin_login(client, user, code)
    assert r.status_code == 302 and r["Location"] == "/admin/"
    r = client.get("/admin/")
    assert r.status_code == 200 and "Cohort compliance console" in r.content.decode()
    assert [e.actor_label for e in events(action="auth.login")] == [user.email]
    # The same code cannot be replayed for a second session (the code itself, not a fresh one:
    # recomputing it could land in the next 30 s step and be a valid new code).
    other = Client()
    admin_login(other, user, code)
    assert not console_reachable(other)


def test_admin_login_is_locked_after_repeated_failures(make_staff, settings):
    settings.COHORT_LOGIN_MAX_FAILURES = 3
    user, device = make_staff()
    client = Client()
    for _ in range(3):
        admin_login(client, user, password="wrong-password!!")
    r = admin_login(client, user, token_for(device))
    assert r.status_code == 200 and "Too many failed sign-in attempts" in r.content.decode()
    assert not console_reachable(client)
    assert len(events(action="auth.login_locked")) == 1


def test_otp_requirement_can_be_switched_off(make_staff, settings):
    settings.COHORT_REQUIRE_ADMIN_OTP = False
    user, _ = make_staff()
    client = Client()
    r = admin_login(client, user)
    assert r.status_code == 302
    assert console_reachable(client)
