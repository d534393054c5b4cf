#!/usr/bin/env bash
# The README's second command: install, then run every test (lint first).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The SFTP tests use Debian's OpenSSH sshd as the real peer when running as root (as CI does).
if [ "$(id -u)" = 0 ] && [ ! -x /usr/sbin/sshd ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
     openssh-server openssh-client >/dev/null) || echo "openssh-server not installed" >&2
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
