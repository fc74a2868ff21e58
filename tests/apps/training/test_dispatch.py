"""Tasks sent by name (apps.common.dispatch): after commit, never for a rolled-back transaction, and
the training handles name tasks that the worker has registered."""

from __future__ import annotations

from typing import Any
from unittest.mock import patch

import pytest
from django.db import transaction

from apps.common import dispatch
from apps.training import dispatch as training_dispatch

pytestmark = pytest.mark.django_db(transaction=True)


class _Broker:
    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple[Any, ...], dict[str, Any] | None, dict[str, Any]]] = []

    def send_task(
        self, name: str, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None, **opts: Any
    ) -> str:
        self.sent.append((name, args, kwargs, opts))
        return name


def test_enqueue_publishes_after_commit_and_not_after_rollback() -> None:
    broker = _Broker()
    with patch.object(dispatch, "current_app", broker):
        with transaction.atomic():
            dispatch.enqueue("training.run_job", args=(1, 2), queue="cpu")
            assert broker.sent == []  # not before commit
        assert broker.sent == [("training.run_job", (1, 2), None, {"queue": "cpu"})]

        def rolled_back() -> None:
            with transaction.atomic():
                dispatch.enqueue("audit.tenant_verify", tenant_id=3)
                raise RuntimeError("rolled back")

        with pytest.raises(RuntimeError):
            rolled_back()
        assert len(broker.sent) == 1  # the rolled-back one never left
        dispatch.enqueue("audit.tenant_verify", tenant_id=3)  # outside a transaction: at once
        assert broker.sent[-1] == ("audit.tenant_verify", (), {"tenant_id": 3}, {})


def test_task_refs_name_registered_tasks() -> None:
    from config.celery_app import app

    app.loader.import_default_modules()
    for ref in (training_dispatch.run_job, training_dispatch.run_node):
        assert ref.name in app.tasks, ref
    assert training_dispatch.SCHEDULE in app.tasks
    broker = _Broker()
    with patch.object(dispatch, "current_app", broker):
        training_dispatch.run_job.apply_async(args=(4, 5), queue="gpu")
        training_dispatch.run_node.delay(4, 5, 1)
    assert broker.sent == [
        ("training.run_job", (4, 5), None, {"queue": "gpu"}),
        ("training.run_node", (4, 5, 1), None, {}),
    ]
