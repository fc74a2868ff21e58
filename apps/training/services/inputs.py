"""What a run reads: the job's dataset version (gated on every check), its decrypted data, and
where its checkpoints live."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from django.conf import settings

from apps.datasets import selectors as dataset_selectors
from apps.datasets.models import DatasetVersion
from apps.datasets.services import VERSION_KIND
from apps.datasets.storage import open_decrypted
from apps.tenancy.scope import tenant_scope
from apps.training.models import TrainingJob
from apps.training.selectors import usable_version
from workers.training.spec import TrainSpec

STOP_CHECK_SECONDS = 0.2


def usable(job: TrainingJob) -> DatasetVersion | None:
    """The job's dataset version while the job's tenant may still use it (else None)."""
    with tenant_scope(job.tenant_id):
        return usable_version(tenant=job.tenant, version_id=job.dataset_version_id)


def load_data(job: TrainingJob, version: DatasetVersion, spec: TrainSpec) -> Any:
    """The version decrypted in memory (never written in plaintext) and prepared for the spec."""
    from workers.schema import DatasetSchema
    from workers.training.data import prepare, prepare_images

    if version.format == "zip":
        with _reader(job, version) as reader:
            return prepare_images(io.BytesIO(reader.read()), spec)
    return prepare(load_table(job, version), DatasetSchema.from_dict(version.schema), spec)


def load_table(job: TrainingJob, version: DatasetVersion) -> pa.Table:
    """A tabular version decrypted in memory (never written in plaintext)."""
    with _reader(job, version) as reader:
        return pq.read_table(pa.PythonFile(reader, mode="r"), pre_buffer=False)


def _reader(job: TrainingJob, version: DatasetVersion) -> Any:
    with tenant_scope(job.tenant_id):
        key = dataset_selectors.version_key(consumer=job.tenant, version=version)
    return open_decrypted(version.tenant_id, VERSION_KIND, version.pk, version.storage_name, key)


def checkpoint_location(tenant_id: int, job_id: int) -> tuple[Path, bytes]:
    """(folder, AEAD context) of the job's checkpoints."""
    folder = Path(settings.COHORT_CHECKPOINT_DIR) / f"t{tenant_id}" / f"job{job_id}"
    return folder, f"cohort/checkpoint/{tenant_id}/{job_id}".encode()
