"""Enqueue Celery tasks by name, so services never import the task modules that call them.

Tasks are thin adapters onto services (``apps.<app>.tasks`` imports ``apps.<app>.services``);
services send work through :func:`enqueue` with the task's registered name, which keeps the import
graph one-way. :func:`enqueue` publishes after the current transaction commits (at once outside
one), so a worker never picks up a message about rows it cannot see yet, and a rolled-back request
sends nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import current_app
from django.db import transaction


def send(
    name: str, *, args: Sequence[Any] = (), queue: str | None = None, countdown: float | None = None, **kwargs: Any
) -> Any:
    """Publish now (the caller already waits for commit, e.g. inside an ``on_commit`` hook).
    ``countdown``: deliver no earlier than this many seconds from now (a round's deadline)."""
    options: dict[str, Any] = {"queue": queue} if queue is not None else {}
    if countdown is not None:
        options["countdown"] = countdown
    return current_app.send_task(name, args=tuple(args), kwargs=kwargs or None, **options)


def enqueue(
    name: str, *, args: Sequence[Any] = (), queue: str | None = None, countdown: float | None = None, **kwargs: Any
) -> None:
    """Publish task ``name`` with ``args``/``kwargs`` once the current transaction commits."""
    frozen = tuple(args)
    transaction.on_commit(lambda: send(name, args=frozen, queue=queue, countdown=countdown, **kwargs))


class TaskRef:
    """A task known only by name, with the ``apply_async``/``delay`` calls of a task object (for
    code written against task objects)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def apply_async(
        self, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None, queue: str | None = None
    ) -> Any:
        return send(self.name, args=args, queue=queue, **(kwargs or {}))

    def delay(self, *args: Any, **kwargs: Any) -> Any:
        return send(self.name, args=args, **kwargs)

    def __repr__(self) -> str:
        return f"TaskRef({self.name!r})"
