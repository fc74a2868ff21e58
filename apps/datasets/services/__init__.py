"""Dataset services (the writes), by concern (see docs/architecture.md, "apps.datasets"):

* :mod:`.quotas` — per-tenant storage quotas: limits, usage, the locked check;
* :mod:`.datasets` — dataset lifecycle: create, rename, soft-delete, retention purge;
* :mod:`.uploads` — upload options, resumable sessions (chunks by byte range), single-request
  uploads, the expiry sweep;
* :mod:`.versions` — processing an upload into an encrypted Parquet version, de-identification
  into a derived version (large ones enqueued by name through ``apps.common.dispatch``), audited
  reads of the tenant's own versions;
* :mod:`.grants` — grants and revocation (recorded on both tenants' chains), audited shared reads;
* :mod:`.budget` — the privacy budget and the reservation ledger;
* :mod:`.common` — the audited refusal helper, version kinds, small shared helpers.

This package re-exports the names callers use, so ``from apps.datasets import services`` keeps
working.
"""

from apps.datasets.services.budget import budget_reserve, budget_set, budget_settle, budget_usage
from apps.datasets.services.common import ON_ROW_ERROR, PART_KIND, VERSION_KIND, UploadRejected
from apps.datasets.services.datasets import dataset_create, dataset_delete, dataset_purge, dataset_update, purge_expired
from apps.datasets.services.grants import grant_create, grant_revoke, shared_read_recorded
from apps.datasets.services.quotas import check_quota, quota_for, usage_for
from apps.datasets.services.uploads import (
    clean_options,
    expire_uploads,
    upload_abort,
    upload_complete,
    upload_part_put,
    upload_received,
    upload_session_create,
    upload_single,
)
from apps.datasets.services.versions import (
    deidentify,
    process_upload,
    process_version_async,
    run_deidentify,
    run_deidentify_async,
    version_batches,
    version_read_recorded,
)

__all__ = [
    "ON_ROW_ERROR",
    "PART_KIND",
    "VERSION_KIND",
    "UploadRejected",
    "budget_reserve",
    "budget_set",
    "budget_settle",
    "budget_usage",
    "check_quota",
    "clean_options",
    "dataset_create",
    "dataset_delete",
    "dataset_purge",
    "dataset_update",
    "deidentify",
    "expire_uploads",
    "grant_create",
    "grant_revoke",
    "process_upload",
    "process_version_async",
    "purge_expired",
    "quota_for",
    "run_deidentify",
    "run_deidentify_async",
    "shared_read_recorded",
    "upload_abort",
    "upload_complete",
    "upload_part_put",
    "upload_received",
    "upload_session_create",
    "upload_single",
    "usage_for",
    "version_batches",
    "version_read_recorded",
]
