"""Federation API serializers. What a caller sees depends on its side: the coordinator sees
global metrics and every site's status, and a site's metrics and counts only where its owner
allows (``share_metrics``); an owner sees its own site in full; nobody sees round-0 statistics."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from rest_framework import serializers

from apps.common.api import StrictSerializer
from apps.federation.models import Federation, FederationEvent, FederationSite, Round, SiteRound


class SiteInput(StrictSerializer):
    dataset_id = serializers.IntegerField(min_value=1)
    role = serializers.ChoiceField(choices=FederationSite.Role.choices, required=False, default="train")


class FederationInput(StrictSerializer):
    name = serializers.CharField(max_length=200, min_length=1)
    spec = serializers.DictField(help_text="FederationSpec: train (a TrainSpec), strategy, rounds, dp, …")
    sites = SiteInput(many=True, help_text="The datasets taking part: own, or granted with federate/process")
    min_sites = serializers.IntegerField(min_value=1, required=False, help_text="Approvals needed to start (k)")


class SimulationInput(StrictSerializer):
    name = serializers.CharField(max_length=200, min_length=1)
    dataset_version = serializers.IntegerField(min_value=1, help_text="A ready de-identified version of your own")
    spec = serializers.DictField(help_text="FederationSpec, as for a federation")
    split = serializers.DictField(
        required=False,
        default=dict,
        help_text="Virtual sites: sites (2..100, default 3), partition (iid | dirichlet), alpha (Dirichlet), "
        "seed, evaluation_sites",
    )
    local_baseline = serializers.BooleanField(
        required=False, default=False, help_text="Also train every site alone and compare with the global model"
    )
    priority = serializers.IntegerField(min_value=-10, max_value=10, required=False, default=0)


class DecisionInput(StrictSerializer):
    digest = serializers.CharField(max_length=64, required=False, default="", help_text="The digest you reviewed")
    expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)
    share_metrics = serializers.BooleanField(required=False, default=False)
    note = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")


class NoteInput(StrictSerializer):
    note = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")


def _side(ctx: Mapping[str, Any], fed_tenant_id: int) -> str:
    return "coordinator" if ctx["tenant_id"] == fed_tenant_id else "participant"


class FederationOutput(serializers.ModelSerializer):
    side = serializers.SerializerMethodField()
    result = serializers.SerializerMethodField()

    class Meta:
        model = Federation
        fields = [
            "id", "name", "side", "status", "status_reason", "spec", "spec_hash", "min_sites", "current_round",
            "result", "created_at", "started_at", "finished_at",
        ]  # fmt: skip

    def get_side(self, obj: Federation) -> str:
        return _side(self.context, obj.tenant_id)

    def get_result(self, obj: Federation) -> dict[str, Any]:
        result = dict(obj.result or {})
        if _side(self.context, obj.tenant_id) == "participant":
            result.pop("per_site", None)
            result.pop("evaluation_only", None)
            result.pop("local_only", None)
            result.pop("central", None)  # the coordinator's own data: its figures are the coordinator's
            if result.get("registered_metrics_on") == "central":  # chosen on the coordinator's data
                result.pop("registered_round", None)
            result.pop("registered_metrics_on", None)
            if "rounds" in result:
                result["rounds"] = [{k: v for k, v in r.items() if k != "central_metrics"} for r in result["rounds"]]
        else:
            shared = set(self.context.get("shared_labels", ()))
            for key in ("per_site", "local_only"):  # per-site figures: where the owner allows
                if key in result:
                    result[key] = {k: v for k, v in result[key].items() if k in shared}
        return result


class SiteOutput(serializers.ModelSerializer):
    owner = serializers.CharField(source="tenant.slug")

    class Meta:
        model = FederationSite
        fields = [
            "id", "label", "owner", "dataset", "role", "approval", "approval_expires_at", "share_metrics", "active",
            "dropped_reason", "last_selected_round",
        ]  # fmt: skip


class InboxOutput(serializers.ModelSerializer):
    federation_name = serializers.CharField(source="federation.name")
    federation_status = serializers.CharField(source="federation.status")
    coordinator = serializers.CharField(source="coordinator.slug")
    digest = serializers.SerializerMethodField()
    shown = serializers.SerializerMethodField()

    class Meta:
        model = FederationSite
        fields = [
            "id", "federation", "federation_name", "federation_status", "coordinator", "label", "dataset", "role",
            "approval", "approval_expires_at", "share_metrics", "active", "dropped_reason", "digest", "shown",
        ]  # fmt: skip

    def _digest(self, obj: FederationSite) -> dict[str, Any]:
        from apps.federation.services import site_digest

        cache = cast(dict[str, Any], self.context).setdefault("_digests", {})
        if obj.pk not in cache:
            cache[obj.pk] = site_digest(obj, obj.federation)
        return cache[obj.pk]

    def get_digest(self, obj: FederationSite) -> str:
        return str(self._digest(obj)["digest"])

    def get_shown(self, obj: FederationSite) -> dict[str, Any]:
        return dict(self._digest(obj)["shown"])


class RoundOutput(serializers.ModelSerializer):
    selected = serializers.SerializerMethodField()
    participants = serializers.SerializerMethodField()
    central_metrics = serializers.SerializerMethodField()

    class Meta:
        model = Round
        fields = [
            "number", "kind", "status", "selected", "participants", "deadline", "opened_at", "closed_at",
            "base_digest", "model_digest", "metrics", "central_metrics", "epsilon", "seconds",
        ]  # fmt: skip

    def get_central_metrics(self, obj: Round) -> dict[str, float]:
        """The base model's metrics on the coordinator's central set: for the coordinator only."""
        return dict(obj.central_metrics or {}) if _side(self.context, obj.tenant_id) == "coordinator" else {}

    def _labels(self, ids: list[int]) -> list[str]:
        labels = self.context.get("labels", {})
        return [labels.get(i, "?") for i in ids]

    def get_selected(self, obj: Round) -> list[str]:
        return self._labels(obj.selected)

    def get_participants(self, obj: Round) -> list[str]:
        return self._labels(obj.participants)


class SlotOutput(serializers.Serializer):
    round = serializers.IntegerField()
    site = serializers.CharField()
    state = serializers.CharField()
    reason = serializers.CharField()
    wait_reason = serializers.CharField(
        help_text="Why a selected site's task has not started: the fl pool is full (with its position) or the "
        "coordinator's site-task quota is reached; empty once admitted"
    )
    attempts = serializers.IntegerField()
    n_examples = serializers.IntegerField(allow_null=True)
    loss = serializers.FloatField(allow_null=True)
    update_norm = serializers.FloatField(allow_null=True)
    seconds = serializers.FloatField(allow_null=True)
    epsilon = serializers.FloatField(allow_null=True)
    eval_metrics = serializers.DictField()
    error = serializers.DictField()


def slot_dict(slot: SiteRound, label: str, visible: bool) -> dict[str, Any]:
    """A slot for the API; ``visible``: the caller may see the site's metrics and counts."""
    hidden = None if not visible else 0
    out = {
        "round": slot.round.number,
        "site": label,
        "state": slot.state,
        "reason": slot.reason,
        "wait_reason": slot.wait_reason,
        "attempts": slot.attempts,
        "n_examples": slot.n_examples if visible else hidden,
        "loss": slot.loss if visible else None,
        "update_norm": slot.update_norm if visible else None,
        "seconds": slot.seconds,
        "epsilon": slot.epsilon if visible else None,
        "eval_metrics": slot.eval_metrics if visible else {},
        "error": {"code": slot.error.get("code"), "message": slot.error.get("message")} if slot.error else {},
    }
    return out


class FederationEventOutput(serializers.ModelSerializer):
    round = serializers.IntegerField(source="round_number", allow_null=True)

    class Meta:
        model = FederationEvent
        fields = ["seq", "kind", "round", "site", "data", "created_at"]
