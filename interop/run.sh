#!/usr/bin/env bash
# Interop harness entry point: installs the third-party servers into .interop/venvs,
# runs interop/scenario.py against each with tinker_async and the official SDK, prints
# the table and exits non-zero on a regression against interop/expected.json.
# Arguments go to run.py (--servers, --clients, --update-expected, --install-only).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
exec "$PYTHON" interop/run.py "$@"
