"""OpenAPI descriptions of Cohort's two authentication schemes (drf-spectacular extensions)."""

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "apps.accounts.authentication.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "coh_<prefix>_<secret>",
            "description": "A tenant API key: `Authorization: Bearer coh_…`. Acts as the integrator role "
            "limited by the key's scopes (read, write).",
        }


class SessionScheme(OpenApiAuthenticationExtension):
    target_class = "apps.accounts.authentication.CsrfSessionAuthentication"
    name = "Session"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "apiKey",
            "in": "cookie",
            "name": "sessionid",
            "description": "Browser session from POST /api/v1/auth/login/. Unsafe methods need the "
            "X-CSRFToken header (GET /api/v1/auth/csrf/).",
        }
