"""Audit every sign-in, failed sign-in and sign-out, whichever path (API or admin console) did it."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.db import transaction
from django.dispatch import receiver

from apps.common.context import Actor


@receiver(user_logged_in, dispatch_uid="cohort_audit_login")
def _logged_in(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    from apps.audit.services import audit_record

    with transaction.atomic():
        audit_record(
            action="auth.login",
            actor=Actor(type="user", id=str(user.pk), label=user.email),
            target=user,
            details={"path": getattr(request, "path", None)},
        )


@receiver(user_login_failed, dispatch_uid="cohort_audit_login_failed")
def _login_failed(sender: Any, credentials: dict[str, Any], request: Any = None, **kwargs: Any) -> None:
    from apps.audit.services import audit_record

    label = str(credentials.get("username") or credentials.get("email") or "")[:255] or None
    audit_record(
        action="auth.login_failed",
        outcome="denied",
        actor=Actor(type="anonymous", label=label),
        details={"reason": "bad_credentials", "path": getattr(request, "path", None)},
    )


@receiver(user_logged_out, dispatch_uid="cohort_audit_logout")
def _logged_out(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    from apps.audit.services import audit_record

    if user is not None:
        audit_record(action="auth.logout", actor=Actor(type="user", id=str(user.pk), label=user.email), target=user)
        # The session's open websockets close (after the logout's commit; the socket's own look at
        # its session every few seconds is the backstop).
        key = getattr(getattr(request, "session", None), "session_key", None)
        if key:
            from django.db import transaction

            from apps.common.socket import close_session_sockets

            uid = user.pk
            transaction.on_commit(lambda: close_session_sockets(uid, key))
