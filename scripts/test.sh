#!/usr/bin/env bash
# The README's second command: install, then run every test (lint first).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The SFTP tests use Debian's OpenSSH sshd as the real peer when running as root (as CI does).
# The ledger, status-store and Dagster-storage tests also run against Debian's PostgreSQL,
# which the suite starts itself in a temporary folder (mm_assets_tests/postgres/server.py).
missing=()
[ -x /usr/sbin/sshd ] || missing+=(openssh-server openssh-client)
compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null || missing+=(postgresql)
if [ "$(id -u)" = 0 ] && [ ${#missing[@]} -gt 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
     "${missing[@]}" >/dev/null) || echo "not installed: ${missing[*]}" >&2
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
