#!/usr/bin/env bash
# Installs the system programs the tests drive for real: Debian's chromium (browser tests through playwright's
# executable_path, no browser download) and PostgreSQL (the store's tests against a real server).
# Needs root and apt; elsewhere it says what is missing and the tests that need it skip with that reason.
set -uo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "system_deps: missing ${need[*]} and cannot install them here (needs root and apt-get); their tests will skip." >&2
  exit 0
fi
echo "system_deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
