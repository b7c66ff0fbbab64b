#!/usr/bin/env bash
# Installs the system packages the test suite drives for real (Debian, as root).
set -euo pipefail
need=()
command -v chromium >/dev/null || need+=(chromium)
# the PostgreSQL store's tests start a throw-away server with Debian's binaries
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
# the MQTT broker and its command-line clients (Debian puts the broker in /usr/sbin)
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_sub >/dev/null || need+=(mosquitto-clients)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "== installing ${need[*]}"
        apt-get update -qq
        # the tests start their own servers: keep the packages from starting system services
        policy=/usr/sbin/policy-rc.d
        own_policy=0
        if [ ! -e "$policy" ]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && own_policy=1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
        if [ "$own_policy" = 1 ]; then rm -f "$policy"; fi
    else
        echo "missing ${need[*]}; the tests that need them will skip (or fail under CI=true)" >&2
    fi
fi
