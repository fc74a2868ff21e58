"""Federation services: governance (create, approve, start, cancel) and rounds (site task, advance,
sweep). Re-exported here for callers; the modules hold the code."""

from apps.federation.services.governance import (
    approval_valid,
    federation_cancel,
    federation_create,
    federation_start,
    parse_spec,
    site_decide,
    site_digest,
    site_revoke,
)
from apps.federation.services.rounds import advance, run_site_round, sweep

__all__ = [
    "advance",
    "approval_valid",
    "federation_cancel",
    "federation_create",
    "federation_start",
    "parse_spec",
    "run_site_round",
    "site_decide",
    "site_digest",
    "site_revoke",
    "sweep",
]
