"""Live audit publishing: skipped when nobody listens, sent when someone does."""

from unittest import mock

import pytest

from apps.audit import live
from apps.audit.services import audit_record


@pytest.mark.django_db
def test_publish_only_with_listeners(tenant, django_capture_on_commit_callbacks):
    with mock.patch.object(live, "publish_audit_event") as publish:
        with django_capture_on_commit_callbacks(execute=True):
            audit_record(action="demo.quiet", tenant=tenant)
        assert publish.call_count == 0
        live.listeners_changed(tenant.pk, 1)
        try:
            with django_capture_on_commit_callbacks(execute=True):
                audit_record(action="demo.watched", tenant=tenant)
            assert publish.call_count == 1
            assert publish.call_args.args[1]["action"] == "demo.watched"
        finally:
            live.listeners_changed(tenant.pk, -1)
    assert live.has_listeners(tenant.pk) is False
