"""Training API routes."""

from django.urls import path

from apps.training.api import views

T = "tenants/<slug:tenant_slug>/"
urlpatterns = [
    path(T + "jobs/", views.JobListApi.as_view(), name="job-list"),
    path(T + "jobs/<pk:job_id>/", views.JobDetailApi.as_view(), name="job-detail"),
    path(T + "jobs/<pk:job_id>/events/", views.JobEventsApi.as_view(), name="job-events"),
    path(T + "training/quota/", views.QuotaApi.as_view(), name="training-quota"),
    path(T + "training/catalogue/", views.CatalogueApi.as_view(), name="training-catalogue"),
    path(T + "models/", views.ModelListApi.as_view(), name="model-list"),
    path(T + "models/<pk:model_id>/", views.ModelDetailApi.as_view(), name="model-detail"),
    path(T + "models/<pk:model_id>/download/", views.ModelDownloadApi.as_view(), name="model-download"),
    path(T + "models/<pk:model_id>/export/", views.ModelExportApi.as_view(), name="model-export"),
    path(T + "models/<pk:model_id>/predict/", views.ModelPredictApi.as_view(), name="model-predict"),
]
