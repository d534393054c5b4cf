#!/usr/bin/env bash
# Run the sandbox and `dagster dev` (the UI on http://127.0.0.1:3000) until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DAGSTER_HOME=${DAGSTER_HOME:-$PWD}
.venv/bin/mm-assets sandbox --state-dir .mm_assets/sandbox &
sandbox_pid=$!
trap 'kill $sandbox_pid 2>/dev/null || true' EXIT
.venv/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p "${PORT:-3000}"
