#!/usr/bin/env bash
# Screenshots of the UI for the README (not part of CI): build and deliver the sample batch
# into a fresh sandbox and Dagster instance (a temporary folder), start dagster-webserver, and
# take headless-Chromium screenshots into docs/screenshots/. As root it installs Debian's
# `chromium` when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! command -v chromium > /dev/null; then
  [ "$(id -u)" = 0 ] || { echo "needs chromium (apt-get install chromium, as root)" >&2; exit 1; }
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium > /dev/null
fi
batch=batch_20261120
work=$(mktemp -d)
export DAGSTER_HOME=$work/dagster_home MM_ASSETS_WORK_DIR=$work/work \
  MM_ASSETS_OUTBOX_DIR=$work/outbox MM_SANDBOX_STATE_DIR=$work/sandbox \
  MM_SANDBOX_SFTP_PORT=0 MM_SANDBOX_CFT_PORT=0 MM_SANDBOX_PROCESSING_LOG_PORT=0
mkdir -p "$DAGSTER_HOME" && cp dagster.yaml "$DAGSTER_HOME/"
source scripts/demo_sandbox.sh
webserver_pid=
stop_all() {
  for pid in $webserver_pid $sandbox_pid; do kill "$pid" 2>/dev/null || true; done
  for pid in $webserver_pid $sandbox_pid; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap stop_all EXIT
ensure_sandbox "$MM_SANDBOX_STATE_DIR" "$work/sandbox.log"
.venv/bin/mm-assets build "data/export/$batch"
.venv/bin/mm-assets deliver "$batch"

port=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
.venv/bin/dagster-webserver -w workspace.yaml -h 127.0.0.1 -p "$port" > "$work/webserver.log" 2>&1 &
webserver_pid=$!
url=http://127.0.0.1:$port
for _ in $(seq 240); do curl -fs "$url/server_info" > /dev/null && break; sleep 0.5; done
curl -fs "$url/server_info" > /dev/null || { cat "$work/webserver.log"; exit 1; }

mkdir -p docs/screenshots
shoot() {  # NAME PATH
  chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1600,1000 \
    --virtual-time-budget=15000 --screenshot="docs/screenshots/$1.png" "$url$2" 2> /dev/null
  echo "docs/screenshots/$1.png  <- $2"
}
shoot asset_graph "/assets/batch_report?view=lineage&lineageScope=upstream&lineageDepth=6"
shoot batch_partitions "/assets/s2s_files?view=partitions&partition=$batch"
shoot upload_receipts_metadata "/assets/upload_receipts?partition=$batch"
shoot delivery_checks "/assets/upload_receipts?view=checks&partition=$batch"
shoot batch_report "/assets/batch_report?partition=$batch"
shoot mediamath_quota "/assets/mediamath_quota?view=events"
