"""``StrictSerializer`` holds a JSON body to its OpenAPI types: no string for an integer, no number
for a string, no ``"yes"`` for a boolean, and ``maxLength`` is measured on the string as sent
(DRF would trim first). Form data keeps DRF's coercion: every form value is a string."""

from __future__ import annotations

from typing import Any

import pytest
from django.http import QueryDict
from rest_framework import serializers

from apps.common.api import StrictSerializer


class Probe(StrictSerializer):
    name = serializers.CharField(max_length=5)
    count = serializers.IntegerField(required=False)
    ratio = serializers.FloatField(required=False)
    on = serializers.BooleanField(required=False)
    note = serializers.CharField(required=False, allow_null=True)


def errors(data: Any) -> dict[str, list[str]]:
    s = Probe(data=data)
    s.is_valid()
    return {k: [str(m) for m in v] for k, v in s.errors.items()}


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"name": 5}, "name"),
        ({"name": True}, "name"),
        ({"name": " abcde"}, "name"),  # 6 characters as sent; DRF alone would trim to 5 and accept
        ({"name": "a", "count": "5"}, "count"),
        ({"name": "a", "count": True}, "count"),
        ({"name": "a", "count": 1.5}, "count"),
        ({"name": "a", "ratio": "0.5"}, "ratio"),
        ({"name": "a", "ratio": False}, "ratio"),
        ({"name": "a", "on": "yes"}, "on"),
        ({"name": "a", "on": 1}, "on"),
    ],
)
def test_json_values_of_the_wrong_type_are_refused(data: dict[str, Any], field: str) -> None:
    assert field in errors(data)


def test_well_typed_json_is_accepted() -> None:
    s = Probe(data={"name": "abcde", "count": 3, "ratio": 1, "on": False, "note": None})
    assert s.is_valid(), s.errors
    assert s.validated_data == {"name": "abcde", "count": 3, "ratio": 1.0, "on": False, "note": None}


def test_form_data_keeps_coercion() -> None:
    s = Probe(data=QueryDict("name=ab&count=5&on=true&ratio=0.5"))
    assert s.is_valid(), s.errors
    assert s.validated_data == {"name": "ab", "count": 5, "on": True, "ratio": 0.5}
