"""Tenancy API routes."""

from django.urls import path

from apps.tenancy.api import views

urlpatterns = [
    path("tenants/", views.TenantListApi.as_view(), name="tenant-list"),
    path("tenants/<slug:tenant_slug>/", views.TenantDetailApi.as_view(), name="tenant-detail"),
    path("tenants/<slug:tenant_slug>/members/", views.MemberListApi.as_view(), name="member-list"),
    path("tenants/<slug:tenant_slug>/members/<pk:member_id>/", views.MemberDetailApi.as_view(), name="member-detail"),
    path("tenants/<slug:tenant_slug>/invitations/", views.InvitationListApi.as_view(), name="invitation-list"),
    path(
        "tenants/<slug:tenant_slug>/invitations/<pk:invitation_id>/",
        views.InvitationDetailApi.as_view(),
        name="invitation-detail",
    ),
    path("invitations/accept/", views.InvitationAcceptApi.as_view(), name="invitation-accept"),
]
