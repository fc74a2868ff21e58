"""Per-request (or per-task) context: request id, source IP, user agent, and the acting principal.

Set by RequestContextMiddleware and by the API base after authentication; read by the audit
helper so services need not pass the request around.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Actor:
    """Who did something: a user, an API key, the system, an edge site, or nobody known."""

    type: str  # user | api_key | system | site | anonymous
    id: str | None = None
    label: str | None = None

    @classmethod
    def system(cls, label: str = "system") -> Actor:
        return cls(type="system", id=None, label=label)

    @classmethod
    def anonymous(cls) -> Actor:
        return cls(type="anonymous")


@dataclass(frozen=True)
class RequestContext:
    request_id: str | None = None
    source_ip: str | None = None
    user_agent: str | None = None
    actor: Actor = field(default_factory=Actor.anonymous)


_ctx: ContextVar[RequestContext] = ContextVar("cohort_request_context", default=RequestContext())  # noqa: B039 (frozen)


def get_context() -> RequestContext:
    return _ctx.get()


def set_context(ctx: RequestContext) -> object:
    return _ctx.set(ctx)


def reset_context(token: object) -> None:
    _ctx.reset(token)  # type: ignore[arg-type]


def set_actor(actor: Actor) -> None:
    """Record the authenticated principal for the rest of this request."""
    _ctx.set(replace(_ctx.get(), actor=actor))


@contextmanager
def context(**changes: object) -> Iterator[RequestContext]:
    token = _ctx.set(replace(_ctx.get(), **changes))  # type: ignore[arg-type]
    try:
        yield _ctx.get()
    finally:
        _ctx.reset(token)
