"""Domain errors (apps.common.exceptions) at the API edge: each answers with the one error envelope
and the status and code the API exceptions they replaced had; the training retry policy is typed."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from django.db import transaction

from apps.common import exceptions as domain
from apps.common.errors import exception_handler
from apps.training.services import classify_failure
from workers.training.data import DataError
from workers.training.spec import SpecError


def _answer(exc: Exception) -> tuple[int, dict[str, Any]]:
    with transaction.atomic():  # the handler marks the request's transaction for rollback
        resp = exception_handler(exc, {"request": None, "view": None})
    assert resp is not None
    return resp.status_code, resp.data["error"]


@pytest.mark.django_db  # a 403 is an audited denial
def test_each_domain_error_maps_to_the_envelope() -> None:
    assert _answer(domain.Invalid(fields={"spec.epochs": ["Expected an integer >= 1."]})) == (
        400,
        {
            "code": "validation_error",
            "message": "The request is invalid; see fields.",
            "fields": {"spec.epochs": ["Expected an integer >= 1."]},
        },
    )
    assert _answer(domain.Invalid("Give exactly one.", field="rows"))[1]["fields"] == {"rows": ["Give exactly one."]}
    assert _answer(domain.Conflict("This job is already failed.")) == (
        409,
        {"code": "conflict", "message": "This job is already failed."},
    )
    status, body = _answer(domain.Unprocessable("Too big.", code="model_too_large", details={"limit": 10}))
    assert (status, body) == (422, {"code": "model_too_large", "message": "Too big.", "details": {"limit": 10}})
    assert _answer(domain.QuotaExceeded())[0:2] == (
        422,
        {"code": "quota_exceeded", "message": "A quota would be exceeded."},
    )
    assert _answer(domain.PermissionDenied("No.")) == (403, {"code": "permission_denied", "message": "No."})
    assert _answer(domain.Retryable("later")) == (503, {"code": "retryable", "message": "later"})
    assert _answer(domain.RunFailed("bad")) == (422, {"code": "run_failed", "message": "bad"})


@pytest.mark.django_db
def test_not_found_answers_like_any_missing_object_and_is_an_audited_denial() -> None:
    from apps.audit.models import AuditEvent
    from apps.tenancy.scope import platform_scope

    exc = domain.NotFound(reason="dataset_not_usable", target_type="datasets.datasetversion", target_id=7)
    assert _answer(exc) == (404, {"code": "not_found", "message": "Not found."})
    with platform_scope():
        event = AuditEvent.all_tenants.filter(action="access.denied").order_by("-id").first()
    assert event is not None and event.details_dict["reason"] == "dataset_not_usable"
    assert (event.target_type, event.target_id) == ("datasets.datasetversion", "7")


def test_retry_policy_is_typed() -> None:
    for permanent in (
        SpecError("bad", {"epochs": ["x"]}),
        DataError("no label"),
        ValueError("v"),
        KeyError("k"),
        TypeError("t"),
        torch.OutOfMemoryError("oom"),
    ):
        failure = classify_failure(permanent)
        assert isinstance(failure, domain.RunFailed), permanent
        assert failure.message.startswith(type(permanent).__name__ + ":")
    for transient in (ConnectionError("broker"), RuntimeError("gloo"), OSError("disk"), TimeoutError("t")):
        assert isinstance(classify_failure(transient), domain.Retryable), transient
    raised = domain.Retryable("as such")
    assert classify_failure(raised) is raised
    failed = domain.RunFailed("as such")
    assert classify_failure(failed) is failed
