"""Training REST API (views, serializers, urls). ``urlpatterns`` is re-exported for
``include("apps.training.api")`` in config/urls.py."""

from apps.training.api.urls import urlpatterns

__all__ = ["urlpatterns"]
