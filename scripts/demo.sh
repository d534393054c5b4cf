#!/usr/bin/env bash
# The README's first command: install, start the local sandbox, build the sample export batch
# through Dagster (raw_audiences -> merged_segment_loads -> s2s_files + checks) and deliver it
# to the sandbox's SFTP drop (upload_receipts + check), on the embedded defaults. Then the same
# with nobody typing: the Dagster daemon and its sensors take a new batch dropped into an export
# folder through build, checks, delivery and MediaMath's verdict, printed per file.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DAGSTER_HOME=${DAGSTER_HOME:-$PWD}
state=${MM_SANDBOX_STATE_DIR:-.mm_assets/sandbox}
mkdir -p .mm_assets
source scripts/demo_sandbox.sh
daemon_pid=
sandbox_pid=
stop_all() {
  # Only what this script started: a sandbox it found running (ui.sh) keeps running.
  for pid in $daemon_pid $sandbox_pid; do kill "$pid" 2>/dev/null || true; done
  for pid in $daemon_pid $sandbox_pid; do wait "$pid" 2>/dev/null || true; done
}
trap stop_all EXIT
ensure_sandbox "$state" .mm_assets/sandbox.log || exit 1
.venv/bin/mm-assets build data/export/batch_20261120
.venv/bin/mm-assets deliver batch_20261120
echo
echo "Delivered to the sandbox's SFTP drop: $state/sftp_drop"
ls -l "$state/sftp_drop"

echo
echo "== Unattended: a new batch, the daemon and the sensors, no command typed =="
if .venv/bin/dagster-daemon liveness-check > /dev/null 2>&1; then
  # A second daemon on one instance would tick the same sensors with another export folder.
  echo "a Dagster daemon already runs on $DAGSTER_HOME (scripts/ui.sh?): skipping this part;"
  echo "in the UI, turn on the sensor moloco_export_batches (Automation) to see it there"
  exit 0
fi
flow_export=$PWD/.mm_assets/demo_export
rm -rf "$flow_export" && mkdir -p "$flow_export"
export MM_ASSETS_EXPORT_DIR=$flow_export
# moloco_export_batches is the one sensor off by default; the others start with the daemon.
.venv/bin/dagster sensor start -w workspace.yaml moloco_export_batches > /dev/null
.venv/bin/dagster-daemon run -w workspace.yaml > .mm_assets/daemon.log 2>&1 &
daemon_pid=$!
batch=batch_$(date -u +%Y%m%d%H%M%S)
staging=$PWD/.mm_assets/demo_staging
rm -rf "$staging" && mkdir -p "$staging"
cp -r data/export/batch_20261120 "$staging/$batch"
touch "$staging/$batch/_SUCCESS"
mv "$staging/$batch" "$flow_export/$batch"   # appears complete, at once
echo "dropped $batch into $flow_export; waiting for MediaMath's verdict (a few minutes)"
.venv/bin/python - "$batch" <<'PY'
import sys, time
from mm_assets.definitions import defs
from mm_assets.processing_log.status_store import FINAL_STATES

batch = sys.argv[1]
delivery = defs.resources["delivery"].process_config_and_initialize()
log = defs.resources["processing_log"].process_config_and_initialize()
for _ in range(120):  # at most 10 minutes
    with log.store(delivery) as store:
        rows = store.batch(batch)
    if rows and all(r.status in FINAL_STATES for r in rows):
        break
    time.sleep(5)
else:
    sys.exit(f"{batch}: no verdict for every file yet; see .mm_assets/daemon.log and the UI")
for r in rows:
    print(f"  {r.status:<9} {r.file_name}  {r.message}")
PY
echo
echo "See the lineage, runs and checks:  bash scripts/ui.sh   (dagster dev + the sandbox)"
