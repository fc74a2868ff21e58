"""Training services, by concern (see docs/architecture.md, "apps.training"):

* :mod:`.jobs` — create (spec validated, dataset gate, admission) and cancel;
* :mod:`.runner` — the ``training.run_job`` body: claim, run, finish, retry policy;
  :mod:`.lease` (lease + usage accounting), :mod:`.sink` (metrics, logs, checkpoints),
  :mod:`.inputs` (dataset gate, decrypted data, checkpoint location), :mod:`.events` (job events);
* :mod:`.distributed` — data-parallel and multi-node runs (rendezvous, ``training.run_node``);
* :mod:`.registry` — model versions (register, audited download);
* :mod:`.serving` — batch predict and export.

This package re-exports the public names (and the few private ones tests patch) so
``from apps.training import services`` keeps working.
"""

from apps.training.selectors import usable_version
from apps.training.services.distributed import lead_nodes, run_node_task, train_distributed
from apps.training.services.events import _event, append_event
from apps.training.services.inputs import STOP_CHECK_SECONDS, checkpoint_location, load_data, usable
from apps.training.services.jobs import job_cancel, job_create, parse_spec, simulation_create
from apps.training.services.lease import Lease, LeaseLost
from apps.training.services.registry import (
    code_version,
    model_download,
    open_weights,
    register_federation_model,
    register_model,
    register_simulation_model,
    torch_version,
    weights_bytes,
)
from apps.training.services.runner import NOT_RETRIED, JobAccessLost, claim, classify_failure, finish, run_job
from apps.training.services.serving import (
    EXPORT_FORMATS,
    PREDICT_MAX_ROWS,
    SERVING_CACHE_SIZE,
    load_for_serving,
    model_export,
    model_predict,
    servable,
)
from apps.training.services.sink import METRICS_MIN_INTERVAL, DjangoSink

# Former private names of the single-module services (tests and older callers).
_finish = finish
_load_for_serving = load_for_serving
_load_data = load_data
_usable = usable
_register_model = register_model
_weights_bytes = weights_bytes
_train_distributed = train_distributed
_lead_nodes = lead_nodes

__all__ = [
    "EXPORT_FORMATS",
    "METRICS_MIN_INTERVAL",
    "NOT_RETRIED",
    "PREDICT_MAX_ROWS",
    "SERVING_CACHE_SIZE",
    "STOP_CHECK_SECONDS",
    "DjangoSink",
    "JobAccessLost",
    "Lease",
    "LeaseLost",
    "_event",
    "append_event",
    "checkpoint_location",
    "claim",
    "classify_failure",
    "code_version",
    "finish",
    "job_cancel",
    "job_create",
    "lead_nodes",
    "load_data",
    "load_for_serving",
    "model_download",
    "model_export",
    "model_predict",
    "open_weights",
    "parse_spec",
    "register_federation_model",
    "register_model",
    "register_simulation_model",
    "run_job",
    "run_node_task",
    "servable",
    "simulation_create",
    "torch_version",
    "train_distributed",
    "usable",
    "usable_version",
    "weights_bytes",
]
