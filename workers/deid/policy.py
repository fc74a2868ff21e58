"""De-identification policies: what happens to each column, and which columns k-anonymity covers.

A policy is data (``to_dict``/``from_dict`` round-trip through JSON) so that the platform can store
the exact policy a dataset version was produced with, show it for review, and re-apply it.

Actions (exact strings) and their parameters:

============  ===========================================  =====================================
action        params                                       output type
============  ===========================================  =====================================
keep          {}                                           unchanged
drop          {}                                           column removed
mask          {keep_last: int = 0, char: "*"}              string (integer input is rendered in
                                                           decimal first; other types: error)
pseudonymise  {}                                           string ``tok_`` + 26 base32 chars
generalise    date/datetime: {to: "year" | "month"}        integer year / string "YYYY-MM"
              integer/float: {bin_width, origin = 0}       category "[40, 50)"
                             or {bins: [e0, e1, ...]}      category "[e0, e1)", "< e0", ">= en"
              string/category: {prefix: "outward" | n}     same type (postcode district / first n)
              category/string: {map: {value: group},       category
                                other: str (optional)}
redact        {kinds: [kind, ...] | "all"}                 unchanged (spans -> "[EMAIL]" ...)
============  ===========================================  =====================================

Decisions, documented here because reviewers ask:

* Columns not listed in a policy are **kept** -- except that :meth:`DeidPolicy.check` refuses a
  policy that keeps a column whose schema role is ``identifier``; direct identifiers must be
  dropped, masked or pseudonymised explicitly.
* ``mask`` on numbers other than integers is an error, not a silent null: a caller who wants the
  value gone should say ``drop``; a caller who wants less precision should say ``generalise``.
* The label column may be kept or generalised (e.g. binned for classification), never dropped,
  masked, redacted or pseudonymised; for a regression task only a numeric-preserving generalise
  (date -> year) is allowed.
* ``k`` is between 2 and 1000; quasi-identifiers must exist, must not be dropped, and a ``k``
  needs at least one quasi-identifier.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from workers.deid.detectors import KINDS
from workers.schema import NUMERIC_TYPES, Column, DatasetSchema

if TYPE_CHECKING:
    from workers.deid.scanner import PiiReport

ACTIONS: tuple[str, ...] = ("keep", "drop", "mask", "pseudonymise", "generalise", "redact")
MIN_K = 2
MAX_K = 1000


class PolicyError(ValueError):
    """A policy that cannot be applied to a schema. ``fields`` maps a path to messages."""

    def __init__(self, message: str, fields: dict[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields or {}


@dataclass
class ColumnPolicy:
    action: str
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "params": dict(self.params)}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | str) -> ColumnPolicy:
        """Accept ``{"action": ..., "params": {...}}`` or the shorthand ``"drop"``."""
        if isinstance(data, str):
            return cls(action=data)
        return cls(action=str(data.get("action", "")), params=dict(data.get("params") or {}))


KEEP = ColumnPolicy("keep")


@dataclass
class DeidPolicy:
    columns: dict[str, ColumnPolicy] = field(default_factory=dict)
    quasi_identifiers: list[str] = field(default_factory=list)
    k: int | None = None

    def for_column(self, name: str) -> ColumnPolicy:
        """The policy of ``name``: unlisted columns are kept (see module docstring)."""
        return self.columns.get(name, KEEP)

    def to_dict(self) -> dict[str, Any]:
        return {
            "columns": {name: cp.to_dict() for name, cp in self.columns.items()},
            "quasi_identifiers": list(self.quasi_identifiers),
            "k": self.k,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeidPolicy:
        try:
            columns = {str(n): ColumnPolicy.from_dict(cp) for n, cp in (data.get("columns") or {}).items()}
            qis = [str(q) for q in (data.get("quasi_identifiers") or [])]
            k_raw = data.get("k")
            k = None if k_raw is None else int(k_raw)
        except (TypeError, ValueError, AttributeError) as exc:
            raise PolicyError("The policy is not well formed.", {"policy": [str(exc)]}) from exc
        return cls(columns=columns, quasi_identifiers=qis, k=k)

    def check(self, schema: DatasetSchema) -> None:
        """Raise :class:`PolicyError` with per-field messages unless this policy fits ``schema``."""
        errors: dict[str, list[str]] = {}

        def err(path: str, msg: str) -> None:
            errors.setdefault(path, []).append(msg)

        for name, cp in self.columns.items():
            path = f"columns.{name}"
            if not schema.has(name):
                err(path, f"Unknown column {name!r}.")
                continue
            if cp.action not in ACTIONS:
                err(f"{path}.action", f"Unknown action {cp.action!r}; one of {', '.join(ACTIONS)}.")
                continue
            col = schema.column(name)
            for msg in _param_errors(col, cp):
                err(f"{path}.params", msg)
            if name == schema.label or col.role == "label":
                if cp.action in ("drop", "mask", "redact", "pseudonymise"):
                    err(path, f"The label column cannot be {_past(cp.action)}; keep or generalise it.")
                elif (
                    cp.action == "generalise"
                    and schema.task == "regression"
                    and output_type(col, cp) not in NUMERIC_TYPES
                ):
                    err(path, "A regression label must stay numeric; this generalisation makes it a string.")
        for col in schema.columns:
            if col.role == "identifier" and self.for_column(col.name).action == "keep":
                err(
                    f"columns.{col.name}",
                    "Identifier columns must be dropped, masked or pseudonymised, not kept.",
                )
        if self.k is not None and (isinstance(self.k, bool) or not MIN_K <= self.k <= MAX_K):
            err("k", f"k must be between {MIN_K} and {MAX_K}.")
        seen: set[str] = set()
        for i, q in enumerate(self.quasi_identifiers):
            path = f"quasi_identifiers[{i}]"
            if q in seen:
                err(path, f"Duplicate quasi-identifier {q!r}.")
            seen.add(q)
            if not schema.has(q):
                err(path, f"Unknown column {q!r}.")
            elif self.for_column(q).action == "drop":
                err(path, f"The quasi-identifier {q!r} is dropped; remove it from the list.")
        if self.k is not None and not self.quasi_identifiers:
            err("quasi_identifiers", "k-anonymity needs at least one quasi-identifier.")
        if errors:
            raise PolicyError("The de-identification policy is not valid for this schema.", errors)


def _past(action: str) -> str:
    return {"drop": "dropped", "mask": "masked", "redact": "redacted", "pseudonymise": "pseudonymised"}[action]


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _param_errors(col: Column, cp: ColumnPolicy) -> list[str]:
    p, t, a = cp.params, col.type, cp.action
    out: list[str] = []

    def unknown(allowed: set[str]) -> None:
        extra = sorted(set(p) - allowed)
        if extra:
            out.append(f"Unknown parameter(s) for {a}: {', '.join(extra)}.")

    if a in ("keep", "drop", "pseudonymise"):
        unknown(set())
        if a == "pseudonymise" and t in ("float", "boolean"):
            out.append(f"A {t} column cannot be pseudonymised (tokens of {t}s are meaningless); drop or keep it.")
    elif a == "mask":
        unknown({"keep_last", "char"})
        if t not in ("string", "category", "text", "image", "integer"):
            out.append(f"mask applies to strings and integers, not {t}; use generalise or drop.")
        kl = p.get("keep_last", 0)
        if not isinstance(kl, int) or isinstance(kl, bool) or not 0 <= kl <= 64:
            out.append("keep_last must be an integer between 0 and 64.")
        ch = p.get("char", "*")
        if not isinstance(ch, str) or len(ch) != 1:
            out.append("char must be a single character.")
    elif a == "redact":
        unknown({"kinds"})
        if t not in ("string", "category", "text"):
            out.append(f"redact applies to text columns, not {t}.")
        kinds = p.get("kinds", "all")
        if kinds != "all" and (not isinstance(kinds, list) or not kinds or any(k not in KINDS for k in kinds)):
            out.append(f'kinds must be "all" or a non-empty list of: {", ".join(KINDS)}.')
    elif a == "generalise":
        if t in ("date", "datetime"):
            unknown({"to"})
            if p.get("to") not in ("year", "month"):
                out.append('Dates generalise with to: "year" or "month".')
        elif t in NUMERIC_TYPES:
            if "bins" in p:
                unknown({"bins"})
                bins = p["bins"]
                if (
                    not isinstance(bins, list)
                    or len(bins) < 2
                    or not all(_is_number(b) for b in bins)
                    or any(b2 <= b1 for b1, b2 in itertools.pairwise(bins))
                ):
                    out.append("bins must be a strictly increasing list of at least two finite numbers.")
            else:
                unknown({"bin_width", "origin"})
                bw: Any = p.get("bin_width")
                if not _is_number(bw) or bw <= 0:
                    out.append("Numbers generalise with a positive bin_width (or bins).")
                if not _is_number(p.get("origin", 0)):
                    out.append("origin must be a finite number.")
        elif t in ("string", "category"):
            if "map" in p:
                unknown({"map", "other"})
                mp = p["map"]
                if not isinstance(mp, dict) or not mp or not all(isinstance(v, str) for v in mp.values()):
                    out.append("map must be a non-empty object of value -> group (strings).")
                if "other" in p and not isinstance(p["other"], str):
                    out.append("other must be a string.")
            elif "prefix" in p:
                unknown({"prefix"})
                pre = p["prefix"]
                if pre != "outward" and (not isinstance(pre, int) or isinstance(pre, bool) or not 1 <= pre <= 20):
                    out.append('prefix must be "outward" or an integer length between 1 and 20.')
            else:
                out.append("Strings generalise with prefix (postcodes) or map (categories).")
        else:
            out.append(f"A {t} column cannot be generalised.")
    return out


def output_type(col: Column, cp: ColumnPolicy) -> str:
    """The logical type a column has after ``cp`` is applied (assumes a checked policy)."""
    a = cp.action
    if a == "pseudonymise" or a == "mask":
        return "string"
    if a == "generalise":
        if col.type in ("date", "datetime"):
            return "integer" if cp.params.get("to") == "year" else "string"
        if col.type in NUMERIC_TYPES or "map" in cp.params:
            return "category"
        return col.type
    return col.type


def output_schema(schema: DatasetSchema, policy: DeidPolicy) -> DatasetSchema:
    """The schema of de-identified data: dropped columns removed, types after transformation.

    Roles carry over, with two changes: every pseudonymised column becomes (or stays)
    ``identifier`` -- random tokens are join keys, not features, so training must ignore them; and
    columns named in ``policy.quasi_identifiers`` become ``quasi_identifier`` unless they are the
    label. Generalised columns become nullable (an unrecognised postcode becomes null).
    """
    qis = set(policy.quasi_identifiers)
    cols: list[Column] = []
    for c in schema.columns:
        cp = policy.for_column(c.name)
        if cp.action == "drop":
            continue
        role = c.role
        if cp.action == "pseudonymise" and role in ("feature", "ignore", "quasi_identifier"):
            role = "identifier"
        elif c.name in qis and role in ("feature", "ignore") and c.name != schema.label:
            role = "quasi_identifier"
        nullable = True if cp.action == "generalise" else c.nullable
        cols.append(Column(name=c.name, type=output_type(c, cp), role=role, nullable=nullable))
    return DatasetSchema(columns=cols, label=schema.label, task=schema.task)


def propose_policy(report: PiiReport, schema: DatasetSchema, *, k: int | None = 5) -> DeidPolicy:
    """A starting policy from a scan: every schema column gets the report's proposal (columns the
    scanner never saw are kept), proposals that do not fit the column's type fall back to ``drop``
    for identifiers and ``keep`` otherwise, schema identifiers are never left as ``keep``, and the
    proposed quasi-identifiers get ``k`` (5 by default; None disables k-anonymity).

    The result always passes :meth:`DeidPolicy.check` for ``schema``; it is a proposal for the
    data owner to review, not a decision.
    """
    columns: dict[str, ColumnPolicy] = {}
    qis: list[str] = []
    for col in schema.columns:
        rep = report.columns.get(col.name)
        cp = ColumnPolicy("keep")
        role = col.role
        if rep is not None:
            cp = ColumnPolicy(str(rep.proposed["action"]), dict(rep.proposed.get("params") or {}))
            role = rep.proposed_role if col.role in ("feature", "ignore") else col.role
        is_label = col.name == schema.label or col.role == "label"
        if is_label:
            cp = ColumnPolicy("keep")
        elif _param_errors(col, cp):
            cp = ColumnPolicy("drop" if role == "identifier" else "keep")
        if not is_label and (col.role == "identifier" or role == "identifier") and cp.action == "keep":
            cp = (
                ColumnPolicy("pseudonymise")
                if not _param_errors(col, ColumnPolicy("pseudonymise"))
                else ColumnPolicy("drop")
            )
        columns[col.name] = cp
        if not is_label and role == "quasi_identifier" and cp.action != "drop":
            qis.append(col.name)
    return DeidPolicy(columns=columns, quasi_identifiers=qis, k=k if qis else None)
