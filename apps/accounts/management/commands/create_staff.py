"""``manage.py create_staff --email X [--password P] [--reset-totp]``: a console user with a TOTP device."""

from __future__ import annotations

import secrets
from base64 import b32encode
from typing import Any
from urllib.parse import quote, urlencode

from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django_otp.plugins.otp_totp.models import TOTPDevice

from apps.accounts.models import User
from apps.accounts.services import user_create
from apps.audit.services import audit_record, audited_change
from apps.common.context import Actor

ISSUER = "Cohort"
DEVICE_NAME = "cohort-console"


def otpauth_url(device: TOTPDevice, email: str) -> str:
    """The provisioning URI an authenticator app scans (contains the secret: show it once)."""
    params = urlencode(
        {
            "secret": b32encode(device.bin_key).decode(),
            "algorithm": "SHA1",
            "digits": device.digits,
            "period": device.step,
            "issuer": ISSUER,
        }
    )
    return f"otpauth://totp/{quote(f'{ISSUER}:{email}')}?{params}"


class Command(BaseCommand):
    help = (
        "Create a platform compliance staff user (is_staff) with a confirmed TOTP device and print its "
        "otpauth:// URL once. Idempotent for an existing user; --reset-totp rotates the device."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--email", required=True)
        parser.add_argument(
            "--password", default=None, help="For a new user; omitted: a random one is generated and printed once."
        )
        parser.add_argument("--reset-totp", action="store_true", help="Replace the user's TOTP devices.")

    def handle(self, *args: Any, email: str, password: str | None, reset_totp: bool, **options: Any) -> None:
        email = User.objects.normalize_email(email.strip()).lower()
        actor = Actor.system("manage.py create_staff")
        generated = None
        with transaction.atomic():
            user = User.objects.filter(email=email).first()
            if user is None:
                if password is None:
                    password = generated = secrets.token_urlsafe(18)
                try:
                    validate_password(password, user=User(email=email))
                except ValidationError as exc:
                    raise CommandError("; ".join(exc.messages)) from exc
                user = user_create(email=email, password=password, is_staff=True, actor=actor)
                self.stdout.write(f"Created staff user {email}.")
            else:
                if password is not None:
                    self.stderr.write("The user exists: --password ignored (use `manage.py changepassword`).")
                if not user.is_staff:
                    with audited_change():
                        user.is_staff = True
                        user.save(update_fields=["is_staff"])
                        audit_record(action="user.staff_granted", actor=actor, target=user, details={"is_staff": True})
                    self.stdout.write(f"Granted staff to existing user {email}.")
                else:
                    self.stdout.write(f"Staff user {email} already exists.")
            devices = TOTPDevice.objects.filter(user=user)
            has_confirmed = devices.filter(confirmed=True).exists()
            if has_confirmed and not reset_totp:
                self.stdout.write("A confirmed TOTP device exists; unchanged (use --reset-totp to rotate it).")
                return
            removed = devices.count()
            devices.delete()
            device = TOTPDevice.objects.create(user=user, name=DEVICE_NAME, confirmed=True)
            audit_record(
                action="staff.totp_rotated" if removed else "staff.totp_enrolled",
                actor=actor,
                target=user,
                details={"device_name": DEVICE_NAME, "devices_removed": removed},
            )
            url = otpauth_url(device, email)
            secret_b32 = b32encode(device.bin_key).decode()
        if generated:
            self.stdout.write(f"Password (shown once): {generated}")
        self.stdout.write("TOTP enrolled. Add it to an authenticator app now; it is not shown again.")
        self.stdout.write(f"otpauth URL: {url}")
        self.stdout.write(f"Secret (base32): {secret_b32}")
