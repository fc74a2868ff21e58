"""Who opens a websocket: an integrator's API key or a browser's session.

* ``Authorization: Bearer coh_…`` on the handshake (integrators' clients set it; browsers cannot):
  the key is checked as the REST API checks it (``authenticate_bearer``: unknown, revoked and
  expired keys and suspended tenants refused, and audited as ``api_key.use_denied``). No cookie
  is read and no ``Origin`` is required: a key is no ambient credential a page could borrow. A
  refused key opens nothing: the stream closes with 4401, never falling back to a session.
* Otherwise (no ``Authorization`` header, or another scheme such as a proxy's Basic auth) the
  session cookie, behind the allowed-hosts ``Origin`` check (a cookie *is* ambient: another
  site's page must not open a socket with it).

The stream then checks the key's tenant and scope like the REST API (``apps.common.stream``), and
closes the socket when the key is revoked (the tenant's control group) or expires.
"""

from __future__ import annotations

from typing import Any

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.security.websocket import AllowedHostsOriginValidator
from django.contrib.auth.models import AnonymousUser
from django.db import transaction
from rest_framework.exceptions import AuthenticationFailed

from apps.accounts.authentication import authenticate_bearer


@database_sync_to_async
def _key_principal(header: str) -> Any:
    # One transaction (the lookups set transaction-local RLS settings); a refusal is caught inside
    # it, so its ``api_key.use_denied`` audit event commits.
    with transaction.atomic():
        try:
            found = authenticate_bearer(header)
        except AuthenticationFailed:
            return AnonymousUser()
        return AnonymousUser() if found is None else found[0]


class ApiKeyOrSessionMiddleware:
    """ASGI middleware for the websocket router: see the module docstring."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.session = AllowedHostsOriginValidator(AuthMiddlewareStack(inner))

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        headers = [v for k, v in scope.get("headers", []) if k.lower() == b"authorization"]
        bearer = [v for v in headers if v.split()[:1] and v.split()[0].lower() == b"bearer"]
        if not bearer:  # none, or another scheme (a proxy's Basic auth): the browser's session path
            return await self.session(scope, receive, send)
        # Two Authorization headers with a key among them open nothing.
        user = await _key_principal(bearer[0].decode("latin-1")) if len(headers) == 1 else AnonymousUser()
        return await self.inner({**scope, "user": user}, receive, send)
