"""App config for apps.federation: federations across tenants' datasets, their rounds and streams."""

from django.apps import AppConfig


class FederationConfig(AppConfig):
    name = "apps.federation"
    label = "federation"
    default_auto_field = "django.db.models.BigAutoField"
