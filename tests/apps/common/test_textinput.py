"""``apps.common.textinput``: NUL characters are found by path in any JSON-like value, and refused
at the edge (query strings by the middleware, bodies by the parsers) with the one error shape."""

from __future__ import annotations

import io

import pytest
from django.test import RequestFactory
from rest_framework.exceptions import ValidationError

from apps.common.parsers import JSONParser
from apps.common.textinput import MESSAGE, NulRejectMiddleware, has_nul, nul_paths, reject_nul


def test_paths() -> None:
    value = {"a": "x", "b": {"c": ["ok", "n\x00", {"d\x00": 1}]}, "e": 3, "f": None}
    assert list(nul_paths(value)) == ["b.c[1]", "b.c[2].d\\u0000"]
    assert list(nul_paths("\x00")) == ["non_field_errors"]
    assert not has_nul({"a": ["b", 1, 2.5, True, None]})
    with pytest.raises(ValidationError) as ei:
        reject_nul({"q": "\x00", "r": ["\x00"]})
    assert {k: [str(m) for m in v] for k, v in ei.value.detail.items()} == {"q": [MESSAGE], "r[0]": [MESSAGE]}


def test_json_parser_rejects_escaped_nul() -> None:
    with pytest.raises(ValidationError) as ei:
        JSONParser().parse(io.BytesIO(b'{"spec": {"model": {"params": {"hidden": ["\\u0000"]}}}}'))
    assert list(ei.value.detail) == ["spec.model.params.hidden[0]"]
    assert JSONParser().parse(io.BytesIO(b'{"a": "b"}')) == {"a": "b"}


def test_middleware_outside_the_api_answers_plain_400() -> None:
    seen: list[str] = []

    def view(request: object) -> object:
        seen.append("called")
        return "ok"

    mw = NulRejectMiddleware(view)  # type: ignore[arg-type]
    rf = RequestFactory()
    r = mw(rf.get("/admin/?q=%00"))
    assert r.status_code == 400 and r["Content-Type"].startswith("text/plain") and not seen
    assert mw(rf.get("/admin/?q=ok")) == "ok" and seen == ["called"]
