"""Local development settings (`make run`)."""

from config.settings.base import *  # noqa: F403

DEBUG = True
