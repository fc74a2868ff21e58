#!/usr/bin/env bash
# Time Flower 1.42's FedAvg aggregation for bench/fl_aggregate.py (see aggregate_bench.py).
# Flower lives in its own venv (bench/flower/.venv): its pins conflict with the platform's. The venv
# is created (as make_golden.sh does) only when it cannot import flwr; a failure here means "Flower
# baseline unavailable" to the caller, never a failed benchmark run.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python3.11}"
if ! "$here/.venv/bin/python" -c "import flwr" >/dev/null 2>&1; then
    "$python" -m venv "$here/.venv"
    "$here/.venv/bin/pip" install --quiet --disable-pip-version-check --timeout 30 --retries 1 \
        -r "$here/requirements.txt" >&2
fi
exec "$here/.venv/bin/python" "$here/aggregate_bench.py" "$@"
