"""De-identification: find PII in uploaded tables, propose a policy, apply it to an Arrow stream.

Pure Python (pyarrow, numpy); never imports Django. The pieces:

* :mod:`~workers.deid.detectors` -- span detectors per PII kind, with documented precision rules;
* :mod:`~workers.deid.scanner` -- :class:`PiiScanner`, an ingest observer producing a masked report;
* :mod:`~workers.deid.policy` -- :class:`DeidPolicy` (per-column actions, k), checks, proposals;
* :mod:`~workers.deid.transform` -- :class:`Deidentifier`, :class:`KAnonymizer`, :func:`deidentify`.
"""

from __future__ import annotations

from workers.deid.detectors import KINDS, column_hints, detect, detect_value
from workers.deid.policy import (
    ACTIONS,
    ColumnPolicy,
    DeidPolicy,
    PolicyError,
    output_schema,
    propose_policy,
)
from workers.deid.scanner import PiiReport, PiiScanner
from workers.deid.transform import Deidentifier, DeidStats, KAnonymizer, deidentify

__all__ = [
    "ACTIONS",
    "KINDS",
    "ColumnPolicy",
    "DeidPolicy",
    "DeidStats",
    "Deidentifier",
    "KAnonymizer",
    "PiiReport",
    "PiiScanner",
    "PolicyError",
    "column_hints",
    "deidentify",
    "detect",
    "detect_value",
    "output_schema",
    "propose_policy",
]
