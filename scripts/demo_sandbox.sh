#!/usr/bin/env bash
# Sourced by scripts/demo.sh (and its test): `ensure_sandbox STATE_DIR LOG` uses the sandbox
# already running from STATE_DIR (scripts/ui.sh, another terminal) as it is, or, when none
# runs, says that it resets the sandbox (drop, receipts, quota use; the host key is kept) and
# starts a fresh one in the background. Sets `sandbox_pid` to the sandbox it started (empty
# when it uses a running one, which it never stops or wipes).
ensure_sandbox() {
  local state=$1 log=$2 status
  sandbox_pid=
  mkdir -p "$state"
  if status=$(.venv/bin/mm-assets sandbox --state-dir "$state" --status); then
    echo "using the $status"
    echo "  (kept as it is: its SFTP drop, receipts and quota use; files already delivered are not sent again)"
    return 0
  fi
  echo "no sandbox running from $state: starting a fresh one (its SFTP drop, receipts and quota use are reset)"
  rm -rf "$state/sandbox.json" "$state/sftp_drop" "$state/ledger.sqlite"
  .venv/bin/mm-assets sandbox --state-dir "$state" > "$log" 2>&1 &
  sandbox_pid=$!
  local _
  for _ in $(seq 150); do
    [ -f "$state/sandbox.json" ] && return 0
    kill -0 "$sandbox_pid" 2>/dev/null || break
    sleep 0.2
  done
  # One line from the sandbox says why (a port in use, a bad setting).
  echo "the sandbox did not start: $(tail -n 1 "$log")" >&2
  sandbox_pid=
  return 1
}
