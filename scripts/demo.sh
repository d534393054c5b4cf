#!/usr/bin/env bash
# The README's first command: install, start the local sandbox, build the sample export batch
# through Dagster (raw_audiences -> merged_segment_loads -> s2s_files + checks) and deliver it
# to the sandbox's SFTP drop (upload_receipts + check), on the embedded defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DAGSTER_HOME=${DAGSTER_HOME:-$PWD}
state=.mm_assets/sandbox
mkdir -p "$state"
# A fresh sandbox MediaMath each time: empty drop, no receipts, full quota (host key kept).
rm -rf "$state/sandbox.json" "$state/sftp_drop" "$state/ledger.sqlite"
.venv/bin/mm-assets sandbox --state-dir "$state" > .mm_assets/sandbox.log 2>&1 &
sandbox_pid=$!
trap 'kill $sandbox_pid 2>/dev/null || true; wait $sandbox_pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -f "$state/sandbox.json" ] && break; sleep 0.2; done
[ -f "$state/sandbox.json" ] || { cat .mm_assets/sandbox.log; exit 1; }
.venv/bin/mm-assets build data/export/batch_20261120
.venv/bin/mm-assets deliver batch_20261120
echo
echo "Delivered to the sandbox's SFTP drop: $state/sftp_drop"
ls -l "$state/sftp_drop"
echo
echo "See the lineage, runs and checks:  bash scripts/ui.sh   (dagster dev + the sandbox)"
