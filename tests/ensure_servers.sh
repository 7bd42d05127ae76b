#!/usr/bin/env bash
# The test suite runs real servers and tools: make sure Debian's redis-server, redis-cli and
# promtool (package prometheus, for `promtool check metrics` of the daemon's metrics) are
# installed. Installs what is missing when running as root; otherwise says how, and fails
# (a missing server or tool is a failure in CI, never a silent skip).
set -euo pipefail
declare -A package=([redis-server]=redis-server [redis-cli]=redis-tools [promtool]=prometheus)
missing=()
for tool in "${!package[@]}"; do
  command -v "$tool" >/dev/null || missing+=("${package[$tool]}")
done
if [ ${#missing[@]} = 0 ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing ${missing[*]} (Debian packages) for the test suite..."
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The packages start system services (redis on 6379, prometheus on 9090); the tests start their own.
  for service in redis-server prometheus; do
    (service "$service" stop || systemctl stop "$service" || pkill -x "$service") >/dev/null 2>&1 || true
  done
  exit 0
fi
echo "the tests need ${missing[*]}: sudo apt-get install ${missing[*]}" >&2
exit 1
