"""The training tasks by name, for services and the scheduler: they send work through these
handles (``apply_async``/``delay`` publish by task name, see :mod:`apps.common.dispatch`) instead
of importing :mod:`apps.training.tasks`, whose adapters import the services (no import circle)."""

from __future__ import annotations

from apps.common.dispatch import TaskRef

RUN_JOB = "training.run_job"
RUN_NODE = "training.run_node"
SCHEDULE = "training.schedule"

run_job = TaskRef(RUN_JOB)
run_node = TaskRef(RUN_NODE)
