"""The worker's lease on a running job, and the usage it accounts."""

from __future__ import annotations

import time
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from apps.tenancy.scope import tenant_scope
from apps.training.models import TrainingJob
from apps.training.scheduler import record_usage


class LeaseLost(Exception):
    """This worker's lease expired and another worker claimed the job: stop without writing."""


class Lease:
    """The worker's hold on a running job: renewed (throttled) while it trains, fenced by the owner
    token so a worker that lost its lease notices instead of racing the new owner. Each renewal
    also adds the slot-seconds used since the last one to the tenant's usage ledger, so the time
    of a worker that is killed is counted up to its last renewal."""

    def __init__(self, job: TrainingJob) -> None:
        self.job = job
        self.seconds = settings.COHORT_JOB_LEASE_SECONDS
        self.every = max(0.5, min(self.seconds / 4.0, 15.0))
        self._last = time.monotonic()
        self._usage_mark = time.monotonic()

    def renew(self, *, force: bool = False) -> bool:
        """Extend the lease; False when it is no longer ours."""
        now = time.monotonic()
        if not force and now - self._last < self.every:
            return True
        self._last = now
        with tenant_scope(self.job.tenant_id):
            held = TrainingJob.objects.filter(
                pk=self.job.pk, lease_owner=self.job.lease_owner, status=TrainingJob.Status.RUNNING
            ).update(lease_until=timezone.now() + timedelta(seconds=self.seconds))
        self.account()
        return bool(held)

    def account(self) -> None:
        now = time.monotonic()
        elapsed, self._usage_mark = now - self._usage_mark, now
        record_usage(self.job.tenant_id, self.job.queue, elapsed * self.job.slots)
