"""Federation REST API. Coordinator: create, list, get, start, cancel, rounds, sites, events.
Owner: the approvals inbox, approve, reject, revoke. Views parse and answer; services do the work
(and every audit write)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from apps.common.api import error_responses, paginated
from apps.common.idempotency import idempotent
from apps.common.pagination import CursorPagination
from apps.federation import selectors, services
from apps.federation.access import access_coordinated, access_federation, access_own_site
from apps.federation.api.serializers import (
    DecisionInput,
    FederationEventOutput,
    FederationInput,
    FederationOutput,
    InboxOutput,
    NoteInput,
    RoundOutput,
    SimulationInput,
    SiteOutput,
    SlotOutput,
    slot_dict,
)
from apps.federation.live import filter_event
from apps.federation.models import Federation, FederationSite
from apps.tenancy.api.base import TenantApi
from apps.training import services as training_services
from apps.training.api.serializers import JobOutput

TAGS = ["federations"]


class _FederationView(TenantApi):
    def context(self, fed: Federation) -> dict[str, Any]:
        sites = list(selectors.federation_sites(federation=fed))
        mine = self.tenant.pk == fed.tenant_id
        return {
            "tenant_id": self.tenant.pk,
            "labels": {s.pk: s.label for s in sites},
            "sites": sites,
            # Whose metrics and counts the caller may see: the coordinator, where the owner allows;
            # an owner, its own site.
            "visible": {s.pk for s in sites if (mine and s.share_metrics) or s.tenant_id == self.tenant.pk},
            "shared_labels": [s.label for s in sites if (mine and s.share_metrics) or s.tenant_id == self.tenant.pk],
        }


class FederationListApi(_FederationView):
    pagination_class = CursorPagination
    permission_actions = {"GET": "federation.list", "POST": "federation.create"}

    @extend_schema(
        operation_id="federations_list",
        summary="Federations this tenant coordinates or takes part in",
        responses={200: FederationOutput(many=True), **error_responses()},
        tags=TAGS,
    )
    def get(self, request: Request, tenant_slug: str) -> Response:
        paginator = CursorPagination()
        paginator.ordering = "-id"
        page = paginator.paginate_queryset(selectors.federation_list(tenant=self.tenant), request, view=self)
        data = FederationOutput(page, many=True, context={"tenant_id": self.tenant.pk}).data
        return paginator.get_paginated_response(data)

    @extend_schema(
        operation_id="federations_create",
        summary="Draft a federation: one pending site per dataset, for its owner to approve",
        request=FederationInput,
        responses={201: FederationOutput, **error_responses(415)},
        tags=TAGS,
    )
    def post(self, request: Request, tenant_slug: str) -> Response:
        def create() -> Response:
            data = FederationInput(data=request.data)
            data.is_valid(raise_exception=True)
            v = data.validated_data
            fed = services.federation_create(
                tenant=self.tenant,
                created_by=request.user,
                name=v["name"],
                spec=v["spec"],
                sites=[dict(s) for s in v["sites"]],
                min_sites=v.get("min_sites"),
            )
            return Response(FederationOutput(fed, context=self.context(fed)).data, status=status.HTTP_201_CREATED)

        return idempotent(request, self.tenant.pk, create)


class FederationSimulateApi(TenantApi):
    permission_actions = {"POST": "job.create"}

    @extend_schema(
        operation_id="federations_simulate",
        summary="Run a federation spec as a job over seeded virtual sites of your own dataset version",
        description="The version is split into `split.sites` virtual sites (IID, or label-skewed by a Dirichlet "
        "draw per class) and the spec's rounds run in one worker with the hosted round logic. The answer is the "
        "job (kind `simulate`): follow it on the job stream (one `metrics` event per round, `epoch` = the round); "
        "its result holds every round, the per-site metrics and, with `local_baseline`, each site's local-only "
        "model's.",
        request=SimulationInput,
        responses={201: JobOutput, **error_responses(415)},
        tags=TAGS,
    )
    def post(self, request: Request, tenant_slug: str) -> Response:
        def create() -> Response:
            data = SimulationInput(data=request.data)
            data.is_valid(raise_exception=True)
            v = data.validated_data
            job = training_services.simulation_create(
                tenant=self.tenant,
                created_by=request.user,
                name=v["name"],
                dataset_version_id=v["dataset_version"],
                spec=v["spec"],
                split=dict(v["split"]),
                local_baseline=v["local_baseline"],
                priority=v["priority"],
            )
            return Response(JobOutput(job).data, status=status.HTTP_201_CREATED)

        return idempotent(request, self.tenant.pk, create)


class FederationDetailApi(_FederationView):
    permission_actions = {"GET": "federation.list"}

    @extend_schema(
        operation_id="federations_retrieve", responses={200: FederationOutput, **error_responses()}, tags=TAGS
    )
    def get(self, request: Request, tenant_slug: str, federation_id: int) -> Response:
        fed = access_federation(tenant=self.tenant, federation_id=federation_id)
        return Response(FederationOutput(fed, context=self.context(fed)).data)


class FederationStartApi(_FederationView):
    permission_actions = {"POST": "federation.create"}

    @extend_schema(
        operation_id="federations_start",
        summary="Start once k sites approved: pins versions, reserves every dataset's ε, opens round 0",
        request=None,
        responses={200: FederationOutput, **error_responses(409, 422)},
        tags=TAGS,
    )
    def post(self, request: Request, tenant_slug: str, federation_id: int) -> Response:
        fed = access_coordinated(tenant=self.tenant, federation_id=federation_id)
        fed = services.federation_start(tenant=self.tenant, federation=fed, started_by=request.user)
        return Response(FederationOutput(fed, context=self.context(fed)).data)


class FederationCancelApi(_FederationView):
    permission_actions = {"POST": "federation.create"}

    @extend_schema(
        operation_id="federations_cancel",
        summary="Cancel: open slots excluded; spent ε committed, the rest released",
        request=None,
        responses={200: FederationOutput, **error_responses(409)},
        tags=TAGS,
    )
    def post(self, request: Request, tenant_slug: str, federation_id: int) -> Response:
        fed = access_coordinated(tenant=self.tenant, federation_id=federation_id)
        fed = services.federation_cancel(tenant=self.tenant, federation=fed, cancelled_by=request.user)
        return Response(FederationOutput(fed, context=self.context(fed)).data)


class FederationRoundsApi(_FederationView):
    permission_actions = {"GET": "federation.list"}

    @extend_schema(
        operation_id="federations_rounds",
        summary="Rounds: selection, participants, global metrics, model digests, ε",
        responses={200: RoundOutput(many=True), **error_responses()},
        tags=TAGS,
    )
    def get(self, request: Request, tenant_slug: str, federation_id: int) -> Response:
        fed = access_federation(tenant=self.tenant, federation_id=federation_id)
        rounds = selectors.round_list(federation=fed)
        return Response(RoundOutput(rounds, many=True, context=self.context(fed)).data)


class FederationSitesApi(_FederationView):
    permission_actions = {"GET": "federation.list"}

    class SitesOutput(serializers.Serializer):
        site = SiteOutput()
        slots = SlotOutput(many=True)

    @extend_schema(
        operation_id="federations_sites",
        summary="Sites and their state per round (metrics where the owner allows; owners: their own site)",
        responses={200: SitesOutput(many=True), **error_responses()},
        tags=TAGS,
    )
    def get(self, request: Request, tenant_slug: str, federation_id: int) -> Response:
        fed = access_federation(tenant=self.tenant, federation_id=federation_id)
        ctx = self.context(fed)
        sites = [s for s in ctx["sites"] if fed.tenant_id == self.tenant.pk or s.tenant_id == self.tenant.pk]
        slots: dict[int, list[dict[str, Any]]] = {s.pk: [] for s in sites}
        for slot in selectors.slots_of(federation=fed):
            if slot.site_id in slots:
                slots[slot.site_id].append(slot_dict(slot, ctx["labels"][slot.site_id], slot.site_id in ctx["visible"]))
        return Response([{"site": SiteOutput(s).data, "slots": slots[s.pk]} for s in sites])


class FederationEventsApi(_FederationView):
    pagination_class = CursorPagination
    permission_actions = {"GET": "federation.list"}

    @extend_schema(
        operation_id="federations_events",
        summary="The federation's event stream after a sequence number",
        parameters=[OpenApiParameter("after", int, description="Only events with seq > after")],
        responses={200: FederationEventOutput(many=True), **error_responses()},
        tags=TAGS,
    )
    def get(self, request: Request, tenant_slug: str, federation_id: int) -> Response:
        fed = access_federation(tenant=self.tenant, federation_id=federation_id)
        after = request.query_params.get("after", "0")
        if not after.isdigit() or len(after) > 9:
            raise ValidationError({"after": ["A non-negative integer."]})
        ctx = self.context(fed)
        paginator = CursorPagination()
        paginator.ordering = "seq"
        page = paginator.paginate_queryset(selectors.event_list(federation=fed, after=int(after)), request, view=self)
        data = [filter_event(e, ctx["visible"]) for e in FederationEventOutput(page, many=True).data]
        return paginator.get_paginated_response(data)


# --- the owner's side ------------------------------------------------------------------------------


class SiteInboxApi(TenantApi):
    pagination_class = CursorPagination
    permission_actions = {"GET": "federation.list"}

    @extend_schema(
        operation_id="federation_sites_list",
        summary="This tenant's datasets in federations (to approve: each shows the digest to review)",
        responses={200: InboxOutput(many=True), **error_responses()},
        tags=TAGS,
    )
    def get(self, request: Request, tenant_slug: str) -> Response:
        return paginated(self, request, selectors.site_inbox(tenant=self.tenant), InboxOutput)


class _SiteDecisionApi(TenantApi):
    """An owner's decision on its own site: read the body with ``input_class``, then ``decide``."""

    permission_actions = {"POST": "federation.approve"}
    input_class: type[serializers.Serializer[Any]] = NoteInput

    def post(self, request: Request, tenant_slug: str, site_id: int) -> Response:
        site = access_own_site(tenant=self.tenant, site_id=site_id)
        data = self.input_class(data=request.data)
        data.is_valid(raise_exception=True)
        return Response(InboxOutput(self.decide(request, site, data.validated_data)).data)

    def decide(self, request: Request, site: FederationSite, v: dict[str, Any]) -> FederationSite:
        raise NotImplementedError


@extend_schema_view(
    post=extend_schema(
        operation_id="federation_sites_approve",
        summary="Approve the digest you reviewed (optionally until expires_at; share_metrics to let the "
        "coordinator see this site's metrics)",
        request=DecisionInput,
        responses={200: InboxOutput, **error_responses(409, 415)},
        tags=TAGS,
    )
)
class SiteApproveApi(_SiteDecisionApi):
    """The site's owner (owner/admin) approves the digest it was shown: the spec hash, strategy,
    rounds, DP and what the coordinator sees. A digest that no longer matches is a 409."""

    input_class = DecisionInput

    def decide(self, request: Request, site: FederationSite, v: dict[str, Any]) -> FederationSite:
        if not v["digest"]:
            raise ValidationError({"digest": ["Send the digest you reviewed (GET federation-sites/)."]})
        return services.site_decide(
            tenant=self.tenant, site=site, approve=True, digest=v["digest"], decided_by=request.user,
            expires_at=v["expires_at"], share_metrics=v["share_metrics"], note=v["note"],
        )  # fmt: skip


@extend_schema_view(
    post=extend_schema(
        operation_id="federation_sites_reject",
        request=NoteInput,
        responses={200: InboxOutput, **error_responses(409, 415)},
        tags=TAGS,
    )
)
class SiteRejectApi(_SiteDecisionApi):
    """The site's owner declines to take part; the draft cannot count this site."""

    def decide(self, request: Request, site: FederationSite, v: dict[str, Any]) -> FederationSite:
        return services.site_decide(
            tenant=self.tenant, site=site, approve=False, digest="", decided_by=request.user, note=v["note"]
        )


@extend_schema_view(
    post=extend_schema(
        operation_id="federation_sites_revoke",
        summary="Withdraw: a running federation drops the site at its next round (its update discarded)",
        request=NoteInput,
        responses={200: InboxOutput, **error_responses(409, 415)},
        tags=TAGS,
    )
)
class SiteRevokeApi(_SiteDecisionApi):
    """The site's owner withdraws an approval, before or during the run."""

    def decide(self, request: Request, site: FederationSite, v: dict[str, Any]) -> FederationSite:
        return services.site_revoke(tenant=self.tenant, site=site, revoked_by=request.user, note=v["note"])
