"""Federation API routes."""

from django.urls import path

from apps.federation.api import views

T = "tenants/<slug:tenant_slug>/"
F = T + "federations/<pk:federation_id>/"
urlpatterns = [
    path(T + "federations/", views.FederationListApi.as_view(), name="federation-list"),
    path(T + "federations/simulate/", views.FederationSimulateApi.as_view(), name="federation-simulate"),
    path(F, views.FederationDetailApi.as_view(), name="federation-detail"),
    path(F + "start/", views.FederationStartApi.as_view(), name="federation-start"),
    path(F + "cancel/", views.FederationCancelApi.as_view(), name="federation-cancel"),
    path(F + "rounds/", views.FederationRoundsApi.as_view(), name="federation-rounds"),
    path(F + "sites/", views.FederationSitesApi.as_view(), name="federation-sites"),
    path(F + "events/", views.FederationEventsApi.as_view(), name="federation-events"),
    path(T + "federation-sites/", views.SiteInboxApi.as_view(), name="federation-site-inbox"),
    path(T + "federation-sites/<pk:site_id>/approve/", views.SiteApproveApi.as_view(), name="federation-site-approve"),
    path(T + "federation-sites/<pk:site_id>/reject/", views.SiteRejectApi.as_view(), name="federation-site-reject"),
    path(T + "federation-sites/<pk:site_id>/revoke/", views.SiteRevokeApi.as_view(), name="federation-site-revoke"),
]
