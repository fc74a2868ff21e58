"""App config for apps.training: training jobs, their event streams, and the model registry."""

from django.apps import AppConfig


class TrainingConfig(AppConfig):
    name = "apps.training"
    label = "training"
