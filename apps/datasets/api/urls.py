"""Datasets API routes."""

from django.urls import path

from apps.datasets.api import views

T = "tenants/<slug:tenant_slug>/"
D = T + "datasets/<pk:dataset_id>/"
V = D + "versions/<pk:version_id>/"

urlpatterns = [
    path(T + "datasets/", views.DatasetListApi.as_view(), name="dataset-list"),
    path(D, views.DatasetDetailApi.as_view(), name="dataset-detail"),
    path(D + "versions/", views.VersionListApi.as_view(), name="version-list"),
    path(V, views.VersionDetailApi.as_view(), name="version-detail"),
    path(V + "pii-report/", views.PiiReportApi.as_view(), name="version-pii-report"),
    path(V + "deidentify/", views.DeidentifyApi.as_view(), name="version-deidentify"),
    path(V + "preview/", views.VersionPreviewApi.as_view(), name="version-preview"),
    path(V + "download/", views.VersionDownloadApi.as_view(), name="version-download"),
    path(D + "grants/", views.GrantListApi.as_view(), name="grant-list"),
    path(D + "grants/<pk:grant_id>/", views.GrantDetailApi.as_view(), name="grant-detail"),
    path(D + "budget/", views.BudgetApi.as_view(), name="budget"),
    path(D + "budget/reservations/", views.ReservationListApi.as_view(), name="reservation-list"),
    path(
        D + "budget/reservations/<pk:reservation_id>/commit/",
        views.ReservationCommitApi.as_view(),
        name="reservation-commit",
    ),
    path(
        D + "budget/reservations/<pk:reservation_id>/release/",
        views.ReservationReleaseApi.as_view(),
        name="reservation-release",
    ),
    path(T + "uploads/", views.UploadListApi.as_view(), name="upload-list"),
    path(T + "uploads/<pk:upload_id>/", views.UploadDetailApi.as_view(), name="upload-detail"),
    path(T + "uploads/<pk:upload_id>/complete/", views.UploadCompleteApi.as_view(), name="upload-complete"),
    path(T + "shared-datasets/", views.SharedListApi.as_view(), name="shared-list"),
    path(T + "shared-datasets/<pk:dataset_id>/", views.SharedDetailApi.as_view(), name="shared-detail"),
    path(T + "shared-datasets/<pk:dataset_id>/preview/", views.SharedPreviewApi.as_view(), name="shared-preview"),
    path(T + "shared-datasets/<pk:dataset_id>/download/", views.SharedDownloadApi.as_view(), name="shared-download"),
]
