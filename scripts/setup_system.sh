#!/usr/bin/env bash
# System packages the test-suite needs (Debian): Chromium for the browser tests, PostgreSQL for the scale-out tests.
# Idempotent: installs only what is missing.
set -euo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# tests/postgres.py runs initdb + pg_ctl from /usr/lib/postgresql/<version>/bin (it starts its own server).
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
if ((${#need[@]})); then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing system packages: ${need[*]} (run as root or install them)" >&2
  fi
fi
