"""Training API serializers: inputs are strict (unknown fields are 400), outputs read through the
selectors (no queries of their own)."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers
from rest_framework.exceptions import ValidationError

from apps.common.api import StrictSerializer
from apps.training import selectors
from apps.training.models import JobEvent, ModelVersion, TrainingJob
from apps.training.services import PREDICT_MAX_ROWS, servable


class JobOutput(serializers.ModelSerializer):
    dataset_version = serializers.IntegerField(source="dataset_version_id")
    model_version = serializers.SerializerMethodField()

    class Meta:
        model = TrainingJob
        fields = [
            "id",
            "name",
            "kind",
            "dataset_version",
            "spec",
            "simulation",
            "spec_hash",
            "queue",
            "priority",
            "status",
            "status_reason",
            "wait_reason",
            "admitted_at",
            "slots",
            "cancel_requested",
            "attempts",
            "max_restarts",
            "progress",
            "result",
            "error",
            "model_version",
            "created_at",
            "started_at",
            "finished_at",
        ]

    def get_model_version(self, obj: TrainingJob) -> int | None:
        return selectors.job_model_version_id(obj)


class EventOutput(serializers.ModelSerializer):
    class Meta:
        model = JobEvent
        fields = ["seq", "kind", "step", "epoch", "payload", "created_at"]


class ModelOutput(serializers.ModelSerializer):
    job = serializers.IntegerField(
        source="job_id", allow_null=True, help_text="The job that trained it (null: a federation's model)"
    )
    federation = serializers.SerializerMethodField(help_text="The federation whose global model it is (null: a job's)")
    exportable = serializers.SerializerMethodField(
        help_text="Whether TorchScript/ONNX export (and online predict, within its size limit) can rebuild it"
    )

    class Meta:
        model = ModelVersion
        fields = [
            "id", "name", "version", "source", "job", "federation", "spec", "metrics", "lineage", "input_info",
            "sha256", "size_bytes", "exportable", "created_at",
        ]  # fmt: skip

    def get_exportable(self, obj: ModelVersion) -> bool:
        return servable(obj)

    def get_federation(self, obj: ModelVersion) -> int | None:
        fid = (obj.lineage or {}).get("federation_id") if obj.source == "federation" else None
        return int(fid) if fid is not None else None


class JobInput(StrictSerializer):
    name = serializers.CharField(max_length=200, min_length=1)
    dataset_version = serializers.IntegerField(
        min_value=1, help_text="A ready de-identified version, own or granted with process"
    )
    spec = serializers.DictField(help_text="TrainSpec: model, optimizer, schedule, epochs, batch_size, …")
    priority = serializers.IntegerField(min_value=-10, max_value=10, required=False, default=0)


class CatalogueOutput(serializers.Serializer):
    class Model(serializers.Serializer):
        name = serializers.CharField()
        inputs = serializers.ChoiceField(choices=["tabular", "text", "image"], help_text="The data it reads")
        description = serializers.CharField()
        params = serializers.DictField(
            child=serializers.DictField(),
            help_text="name -> {type: integer|number|boolean|array, min, max or max_exclusive, nullable, "
            "items, max_items, default}: what `model.params` accepts",
        )

    models = Model(many=True)
    optimizers = serializers.ListField(child=serializers.CharField())
    schedules = serializers.ListField(child=serializers.CharField())
    defaults = serializers.DictField(help_text="The TrainSpec fields' defaults (an empty spec means these)")


class QuotaOutput(serializers.Serializer):
    class Quota(serializers.Serializer):
        max_concurrent_jobs = serializers.IntegerField()
        max_cpu_jobs = serializers.IntegerField()
        gpu_hours_per_month = serializers.FloatField()
        max_site_tasks = serializers.IntegerField(
            help_text="Federation site tasks on the platform's pool at once, this tenant coordinating"
        )

    class Overrides(serializers.Serializer):
        max_concurrent_jobs = serializers.IntegerField(allow_null=True)
        max_cpu_jobs = serializers.IntegerField(allow_null=True)
        gpu_hours_per_month = serializers.FloatField(allow_null=True)
        max_site_tasks = serializers.IntegerField(allow_null=True)

    class Usage(serializers.Serializer):
        month = serializers.CharField()
        running_jobs = serializers.IntegerField()
        running_cpu_jobs = serializers.IntegerField()
        gpu_hours = serializers.FloatField()
        cpu_hours = serializers.FloatField()

    quota = Quota(help_text="In force: the tenant's overrides, else the platform defaults")
    overrides = Overrides(help_text="Set by operators (`manage.py training_quota`, audited); null = default")
    usage = Usage()
    waiting_jobs = serializers.IntegerField(help_text="Queued jobs not yet admitted (see each job's wait_reason)")


class PredictInput(StrictSerializer):
    rows = serializers.ListField(
        child=serializers.JSONField(),
        required=False,
        max_length=PREDICT_MAX_ROWS,
        help_text="Tabular: objects keyed by feature column; text: strings (or objects keyed by text column)",
    )
    images = serializers.ListField(
        child=serializers.CharField(max_length=2_000_000),
        required=False,
        max_length=PREDICT_MAX_ROWS,
        help_text="Image models: base64-encoded PNG/JPEG files",
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if ("rows" in attrs) == ("images" in attrs):
            raise ValidationError({"rows": ["Give exactly one of rows or images."]})
        if not (attrs.get("rows") or attrs.get("images")):
            raise ValidationError({"rows": ["At least one row."]})
        return attrs


class PredictOutput(serializers.Serializer):
    model = serializers.IntegerField()
    predictions = serializers.ListField(
        child=serializers.DictField(), help_text="{label, probabilities} per row, or {value} for regression"
    )
