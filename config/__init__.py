"""Django project wiring for Cohort (settings, urls, asgi, celery). No domain code lives here."""

from config.celery_app import app as celery_app

__all__ = ["celery_app"]
