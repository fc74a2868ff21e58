"""App config for apps.vault: per-tenant data keys under envelope encryption."""

from django.apps import AppConfig


class VaultConfig(AppConfig):
    name = "apps.vault"
    label = "vault"
