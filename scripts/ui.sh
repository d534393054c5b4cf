#!/usr/bin/env bash
# Run the sandbox and `dagster dev` (the UI on http://127.0.0.1:3000) until Ctrl-C. A sandbox
# already running from the same state folder (scripts/demo.sh) is used as it is, not replaced.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DAGSTER_HOME=${DAGSTER_HOME:-$PWD}
state=${MM_SANDBOX_STATE_DIR:-.mm_assets/sandbox}
sandbox_pid=
if status=$(.venv/bin/mm-assets sandbox --state-dir "$state" --status); then
  echo "using the $status"
else
  .venv/bin/mm-assets sandbox --state-dir "$state" &
  sandbox_pid=$!
fi
trap '[ -z "$sandbox_pid" ] || kill "$sandbox_pid" 2>/dev/null || true' EXIT
.venv/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p "${PORT:-3000}"
