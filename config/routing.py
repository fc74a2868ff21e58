"""Websocket routes."""

from django.urls import path

from apps.audit.consumers import AuditStreamConsumer
from apps.common.socket import LiveConsumer
from apps.federation.consumers import FederationStreamConsumer
from apps.training.consumers import JobStreamConsumer

websocket_urlpatterns = [
    # The one endpoint: subscribe to any number of streams (docs/websocket.md).
    path("ws/v1/", LiveConsumer.as_asgi()),
    # One stream per socket (kept for integrators who use them).
    path("ws/v1/tenants/<slug:tenant_slug>/audit/", AuditStreamConsumer.as_asgi()),
    path("ws/v1/tenants/<slug:tenant_slug>/jobs/<int:job_id>/", JobStreamConsumer.as_asgi()),
    path("ws/v1/tenants/<slug:tenant_slug>/federations/<int:federation_id>/", FederationStreamConsumer.as_asgi()),
]
