"""Console admin for users and their TOTP devices: read-only, never a password hash or a TOTP key."""

from __future__ import annotations

from django.contrib import admin
from django_otp.plugins.otp_totp.models import TOTPDevice

from apps.accounts.models import User
from apps.common.admin_site import ConsoleModelAdmin, cohort_admin_site


@admin.register(User, site=cohort_admin_site)
class UserAdmin(ConsoleModelAdmin):
    """Who exists and who is staff. Staff are created with ``manage.py create_staff`` (audited)."""

    list_display = ("email", "full_name", "is_staff", "is_active", "last_login", "date_joined")
    list_filter = ("is_staff", "is_active")
    search_fields = ("email", "full_name")
    ordering = ("email",)
    fields = ("email", "full_name", "is_staff", "is_active", "is_superuser", "last_login", "date_joined")
    readonly_fields = fields


@admin.register(TOTPDevice, site=cohort_admin_site)
class TOTPDeviceAdmin(ConsoleModelAdmin):
    """Enrolled second factors (metadata only). Rotate with ``manage.py create_staff --reset-totp``."""

    list_display = ("user", "name", "confirmed", "created_at", "last_used_at")
    list_filter = ("confirmed",)
    search_fields = ("user__email", "name")
    list_select_related = ("user",)
    ordering = ("user__email", "id")
    fields = ("user", "name", "confirmed", "created_at", "last_used_at")
    readonly_fields = fields
