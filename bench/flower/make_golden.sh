#!/usr/bin/env bash
# Regenerate tests/workers/federated/golden/flower_1_42.json with Flower's own strategies.
# Flower lives in its own venv (bench/flower/.venv): its pins conflict with the platform's.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python3.11}"
if [ ! -x "$here/.venv/bin/python" ]; then
    "$python" -m venv "$here/.venv"
fi
"$here/.venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
exec "$here/.venv/bin/python" "$here/make_golden.py" "$@"
