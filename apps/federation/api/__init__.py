"""Federation REST API (views, serializers, urls). ``urlpatterns`` is re-exported for
``include("apps.federation.api")`` in config/urls.py."""

from apps.federation.api.urls import urlpatterns

__all__ = ["urlpatterns"]
