"""Websocket routes."""

from django.urls import path

from apps.audit.consumers import AuditStreamConsumer
from apps.federation.consumers import FederationStreamConsumer
from apps.training.consumers import JobStreamConsumer

websocket_urlpatterns = [
    path("ws/v1/tenants/<slug:tenant_slug>/audit/", AuditStreamConsumer.as_asgi()),
    path("ws/v1/tenants/<slug:tenant_slug>/jobs/<int:job_id>/", JobStreamConsumer.as_asgi()),
    path("ws/v1/tenants/<slug:tenant_slug>/federations/<int:federation_id>/", FederationStreamConsumer.as_asgi()),
]
