"""Text input at the edge: no NUL characters anywhere a request carries text.

PostgreSQL's ``text`` and ``jsonb`` cannot hold U+0000, so a NUL that reaches a query is a 500.
It is refused here, once, before any view runs: :class:`NulRejectMiddleware` checks every query
parameter (names and values); the request parsers in :mod:`apps.common.parsers` check
JSON bodies recursively, multipart form fields and uploaded file names. Each answers a 400 in the
project's error shape naming the field (``q``, ``spec.model.params.hidden[0]``, ``file``).
Binary bodies (``application/octet-stream`` upload chunks) are never inspected: NUL is legitimate
in bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from rest_framework.exceptions import ValidationError

NUL = "\x00"
MESSAGE = "NUL characters (U+0000) are not allowed."


def _key(key: object) -> str:
    return str(key).replace(NUL, "\\u0000")


def nul_paths(value: Any, path: str = "") -> Iterator[str]:
    """Field paths (``a.b[0]``) of every string (or mapping key) in ``value`` that holds a NUL."""
    if isinstance(value, str):
        if NUL in value:
            yield path or "non_field_errors"
    elif isinstance(value, dict):
        for k, v in value.items():
            sub = f"{path}.{_key(k)}" if path else _key(k)
            if isinstance(k, str) and NUL in k:
                yield sub
            else:
                yield from nul_paths(v, sub)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            yield from nul_paths(v, f"{path}[{i}]")


def has_nul(value: Any) -> bool:
    return next(nul_paths(value), None) is not None


def reject_nul(value: Any, path: str = "") -> None:
    """Raise a DRF ``ValidationError`` naming every field of ``value`` that holds a NUL."""
    found = list(dict.fromkeys(nul_paths(value, path)))
    if found:
        raise ValidationError({p: [MESSAGE] for p in found})


def query_nul_fields(request: HttpRequest) -> list[str]:
    """Query parameters of ``request`` whose name or a value holds a NUL. (The path is left to the
    URL converters: no route takes free text, and a NUL there is an ordinary JSON 404.)"""
    found: list[str] = []
    for name, values in request.GET.lists():
        if NUL in name or any(NUL in v for v in values):
            found.append(_key(name))
    return found


class NulRejectMiddleware:
    """400 for a NUL in any query parameter, before a view runs."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        found = query_nul_fields(request)
        if not found:
            return self.get_response(request)
        if not request.path.startswith("/api/"):
            return HttpResponseBadRequest(MESSAGE, content_type="text/plain; charset=utf-8")
        body = {
            "error": {
                "code": "validation_error",
                "message": "The request is invalid; see fields.",
                "fields": {name: [MESSAGE] for name in found},
            }
        }
        return JsonResponse(body, status=400, json_dumps_params={"separators": (",", ":")})
