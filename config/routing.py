"""Websocket routes."""

from django.urls import path

from apps.audit.consumers import AuditStreamConsumer

websocket_urlpatterns = [
    path("ws/v1/tenants/<slug:tenant_slug>/audit/", AuditStreamConsumer.as_asgi()),
]
