"""Declared model parameters: one schema per model, used both to validate a spec (at job creation,
via :meth:`TrainSpec.validate`) and to build the model (on the worker), so the two can never
disagree.

A model registers ``params={"hidden": IntList(...), "dropout": Float(...)}``; :func:`resolve`
checks a spec's ``model.params`` against it -- unknown keys, types (``true`` is not a number),
bounds -- and returns the defaults overridden by the given values. Errors are keyed by field path
(``model.params.hidden[0]``), all of them at once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class ParamError(ValueError):
    """``fields`` maps a path (``model.params.dim``) to its messages."""

    def __init__(self, fields: dict[str, list[str]]) -> None:
        super().__init__("; ".join(f"{k}: {' '.join(v)}" for k, v in fields.items()))
        self.fields = fields


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, int | float) and not isinstance(v, bool)) and (not isinstance(v, float) or math.isfinite(v))


@dataclass(frozen=True)
class Int:
    """An integer in ``[lo, hi]``; ``nullable`` lets ``null`` mean "the model's choice"."""

    default: int | None
    lo: int
    hi: int
    nullable: bool = False

    def check(self, v: Any, path: str, errors: dict[str, list[str]]) -> None:
        if v is None and self.nullable:
            return
        if not _is_int(v) or not self.lo <= v <= self.hi:
            extra = "null or " if self.nullable else ""
            errors.setdefault(path, []).append(f"Expected {extra}an integer from {self.lo} to {self.hi}.")

    def describe(self) -> dict[str, Any]:
        return {"type": "integer", "min": self.lo, "max": self.hi, "nullable": self.nullable, "default": self.default}


@dataclass(frozen=True)
class Float:
    """A finite number in ``[lo, hi)`` (``hi`` excluded: dropout 1 drops everything)."""

    default: float
    lo: float
    hi: float

    def check(self, v: Any, path: str, errors: dict[str, list[str]]) -> None:
        if not _is_number(v) or not self.lo <= v < self.hi:
            errors.setdefault(path, []).append(f"Expected a number in [{self.lo:g}, {self.hi:g}).")

    def describe(self) -> dict[str, Any]:
        return {"type": "number", "min": self.lo, "max_exclusive": self.hi, "default": self.default}


@dataclass(frozen=True)
class Bool:
    default: bool

    def check(self, v: Any, path: str, errors: dict[str, list[str]]) -> None:
        if not isinstance(v, bool):
            errors.setdefault(path, []).append("Expected true or false.")

    def describe(self) -> dict[str, Any]:
        return {"type": "boolean", "default": self.default}


@dataclass(frozen=True)
class IntList:
    """A list of at most ``max_items`` integers, each in ``[lo, hi]``."""

    default: tuple[int, ...]
    lo: int
    hi: int
    max_items: int

    def check(self, v: Any, path: str, errors: dict[str, list[str]]) -> None:
        if not isinstance(v, list | tuple):
            errors.setdefault(path, []).append(f"Expected a list of up to {self.max_items} integers.")
            return
        if len(v) > self.max_items:
            errors.setdefault(path, []).append(f"At most {self.max_items} items.")
        for i, item in enumerate(v):
            if not _is_int(item) or not self.lo <= item <= self.hi:
                errors.setdefault(f"{path}[{i}]", []).append(f"Expected an integer from {self.lo} to {self.hi}.")

    def describe(self) -> dict[str, Any]:
        return {
            "type": "array",
            "items": {"type": "integer", "min": self.lo, "max": self.hi},
            "max_items": self.max_items,
            "default": list(self.default),
        }


Param = Int | Float | Bool | IntList
Schema = Mapping[str, Param]


def defaults(schema: Schema) -> dict[str, Any]:
    return {k: (list(p.default) if isinstance(p, IntList) else p.default) for k, p in schema.items()}


def errors_for(schema: Schema, params: Any, prefix: str = "model.params") -> dict[str, list[str]]:
    """Every problem of ``params`` against ``schema``, by field path; empty when valid."""
    if not isinstance(params, dict):
        return {prefix: ["Expected an object."]}
    errors: dict[str, list[str]] = {}
    for key in params:
        if key not in schema:
            known = ", ".join(sorted(schema)) or "none"
            errors.setdefault(f"{prefix}.{key}", []).append(f"Unknown model parameter; known: {known}.")
    for key, param in schema.items():
        if key in params:
            param.check(params[key], f"{prefix}.{key}", errors)
    return errors


def resolve(schema: Schema, params: Any) -> dict[str, Any]:
    """``params`` checked against ``schema`` and merged over its defaults; :class:`ParamError` if invalid."""
    errors = errors_for(schema, params)
    if errors:
        raise ParamError(errors)
    return {**defaults(schema), **params}
