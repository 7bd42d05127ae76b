#!/usr/bin/env bash
# The test suite runs real Redis servers: make sure Debian's redis-server and
# redis-cli are installed. Installs them when missing and running as root;
# otherwise says how, and fails (a missing server is a failure, never a skip).
set -euo pipefail
if command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing redis-server and redis-tools (Debian packages) for the test suite..."
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null
  # The package starts a system service on port 6379; the tests start their own servers.
  (service redis-server stop || systemctl stop redis-server || pkill -x redis-server) >/dev/null 2>&1 || true
  exit 0
fi
echo "redis-server and redis-cli are needed by the tests: sudo apt-get install redis-server redis-tools" >&2
exit 1
