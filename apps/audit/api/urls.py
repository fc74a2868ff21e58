"""Audit API routes."""

from django.urls import path

from apps.audit.api import views

urlpatterns = [
    path("tenants/<slug:tenant_slug>/audit-events/", views.AuditEventListApi.as_view(), name="audit-list"),
    path("tenants/<slug:tenant_slug>/audit-events/export/", views.AuditEventExportApi.as_view(), name="audit-export"),
    path("tenants/<slug:tenant_slug>/audit-events/verify/", views.AuditVerifyApi.as_view(), name="audit-verify"),
    path(
        "tenants/<slug:tenant_slug>/audit-events/<pk:event_id>/",
        views.AuditEventDetailApi.as_view(),
        name="audit-detail",
    ),
]
