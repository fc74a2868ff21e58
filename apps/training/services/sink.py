"""The engine's progress sink for a Django-run job: metrics (throttled), log lines, checkpoints."""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import Any

from apps.training.models import JobEvent, TrainingJob
from apps.training.services.events import append_event
from apps.training.services.lease import Lease, LeaseLost

METRICS_MIN_INTERVAL = 0.1  # at most 10 metric events per second per job (coalesced)


class DjangoSink:
    """The engine's progress sink: persists metrics (throttled), logs, and checkpoints."""

    def __init__(self, job: TrainingJob, checkpoint_dir: Path, key: bytes, context: bytes) -> None:
        self.job = job
        self.dir = checkpoint_dir
        self.key, self.context = key, context
        self._last_metrics = 0.0
        self._pending: tuple[int, int, dict[str, float]] | None = None
        self.log_tail: deque[str] = deque(maxlen=20)
        self.lease: Lease | None = None

    def on_metrics(self, step: int, epoch: int, values: dict[str, float]) -> None:
        now = time.monotonic()
        if now - self._last_metrics < METRICS_MIN_INTERVAL:
            self._pending = (step, epoch, values)  # coalesced: the newest wins
            return
        self._flush_metrics(step, epoch, values)

    def _flush_metrics(self, step: int, epoch: int, values: dict[str, float]) -> None:
        self._last_metrics = time.monotonic()
        self._pending = None
        clean = {k: float(v) for k, v in values.items() if v == v}  # drop NaN
        append_event(
            self.job.pk,
            self.job.tenant_id,
            JobEvent.Kind.METRICS,
            clean,
            step=step,
            epoch=epoch,
            progress={"step": step, "epoch": epoch, **clean},
        )

    def on_round(self, number: int, metrics: dict[str, float]) -> None:
        """A simulated federation round's metrics: one metrics event each (never coalesced), with
        ``step`` and ``epoch`` the round number."""
        self.flush()
        self._flush_metrics(number, number, {k: float(v) for k, v in metrics.items() if v is not None})

    def flush(self) -> None:
        if self._pending is not None:
            self._flush_metrics(*self._pending)

    def on_log(self, line: str) -> None:
        self.log_tail.append(line[:500])
        append_event(self.job.pk, self.job.tenant_id, JobEvent.Kind.LOG, {"line": line[:500]})

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.flush()

    def on_checkpoint(self, state: Any) -> None:
        from workers.training.checkpoint import save_checkpoint

        if self.lease is not None and not self.lease.renew(force=True):
            raise LeaseLost("another worker holds this job's lease: not writing a checkpoint")
        save_checkpoint(state.to_dict(), self.dir, key=self.key, context=self.context, step=state.step)
