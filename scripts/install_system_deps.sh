#!/usr/bin/env bash
# Installs the Debian packages the test suite needs, only when they are missing.
set -euo pipefail
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
# Apache Kvrocks is not a Debian package: the tests use $KVROCKS_BIN, `kvrocks` on PATH or
# ../shared/kvrocks/kvrocks, and skip the Kvrocks backends (saying how to get it) otherwise.
if [ -z "${KVROCKS_BIN:-}" ] && ! command -v kvrocks >/dev/null 2>&1 && [ ! -x ../shared/kvrocks/kvrocks ]; then
  echo "note: no Apache Kvrocks binary found; set KVROCKS_BIN (or use the apache/kvrocks image)" \
       "to run the Kvrocks tests"
fi
if [ ${#need[@]} -eq 0 ]; then
  echo "system packages present: redis-server, redis-cli, chromium"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing with apt-get: ${need[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
# The Debian package starts a system redis on 6379; the tests start their own.
