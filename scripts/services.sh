#!/usr/bin/env bash
# Installs the system packages the test suite drives for real (Debian, as root).
set -euo pipefail
need=()
command -v chromium >/dev/null || need+=(chromium)
# the PostgreSQL store's tests start a throw-away server with Debian's binaries
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "== installing ${need[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    else
        echo "missing ${need[*]}; the tests that need them will skip (or fail under CI=true)" >&2
    fi
fi
