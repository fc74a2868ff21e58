"""URL wiring: API v1, OpenAPI schema and docs, admin console, health checks, the web app."""

from django.urls import include, path, register_converter
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from apps.common.admin_site import cohort_admin_site
from apps.common.converters import PkConverter
from apps.common.health import healthz, readyz
from apps.common.webapp import index as webapp_index

register_converter(PkConverter, "pk")

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="redoc"),
    path("api/v1/", include("apps.accounts.api.urls")),
    path("api/v1/", include("apps.tenancy.api.urls")),
    path("api/v1/", include("apps.audit.api.urls")),
    path("api/v1/", include("apps.datasets.api.urls")),
    path("api/v1/", include("apps.training.api")),
    path("api/v1/", include("apps.federation.api")),
    path("admin/", cohort_admin_site.urls),
    # The analysts' web app: its page at / and at every client route under /app/.
    path("", webapp_index, name="webapp"),
    path("app/", webapp_index, name="webapp-app"),
    path("app/<path:path>", webapp_index, name="webapp-route"),
]

# Under /api/ every error is the JSON envelope, also when no route matched (e.g. an id too long
# for the <pk> converter) or an error escaped DRF.
handler400 = "apps.common.errors.bad_request_view"
handler404 = "apps.common.errors.not_found_view"
handler500 = "apps.common.errors.server_error_view"
