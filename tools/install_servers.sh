#!/usr/bin/env bash
# The servers and tools some tests run for real, from Debian's packages: redis-server (sidecars
# sharing one Redis), promtool (the alert rules' unit tests; Debian ships it in prometheus),
# chromium (the status page's test in a real headless browser), docker-compose (checks the
# compose files against the Compose specification; no daemon needed).
# Installs what is missing when it can (root, or sudo without a password); otherwise says so,
# and those tests are skipped.
set -euo pipefail
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v promtool >/dev/null || missing+=(prometheus)
command -v chromium >/dev/null || missing+=(chromium)
docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null || missing+=(docker-compose)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "not installed: ${missing[*]} (apt-get install ${missing[*]}); their tests are skipped" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -q >/dev/null
"${as_root[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
