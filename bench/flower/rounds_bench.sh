#!/usr/bin/env bash
# Flower 1.42's simulation (Ray backend) for bench/fl_rounds.py (see rounds_bench.py).
# Flower lives in its own venv (bench/flower/.venv): its pins conflict with the platform's. The venv
# is created, and flwr[simulation] and CPU torch installed into it, only when it cannot import
# them; a failure here means "Flower baseline unavailable" to the caller, never a failed run.
# --setup-only: build the venv and exit.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python3.11}"
if ! "$here/.venv/bin/python" -c "import flwr, ray, torch" >/dev/null 2>&1; then
    if [ ! -x "$here/.venv/bin/python" ]; then
        "$python" -m venv "$here/.venv"
    fi
    "$here/.venv/bin/pip" install --quiet --disable-pip-version-check --timeout 30 --retries 1 \
        -r "$here/requirements-rounds.txt" >&2
fi
if [ "${1:-}" = "--setup-only" ]; then
    exit 0
fi
exec "$here/.venv/bin/python" "$here/rounds_bench.py" "$@"
