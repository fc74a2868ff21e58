"""Accounts API routes."""

from django.urls import path

from apps.accounts.api import views

urlpatterns = [
    path("auth/csrf/", views.CsrfApi.as_view(), name="auth-csrf"),
    path("auth/login/", views.LoginApi.as_view(), name="auth-login"),
    path("auth/logout/", views.LogoutApi.as_view(), name="auth-logout"),
    path("auth/me/", views.MeApi.as_view(), name="auth-me"),
    path("tenants/<slug:tenant_slug>/api-keys/", views.ApiKeyListApi.as_view(), name="apikey-list"),
    path("tenants/<slug:tenant_slug>/api-keys/<pk:key_id>/", views.ApiKeyDetailApi.as_view(), name="apikey-detail"),
]
