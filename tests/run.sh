#!/usr/bin/env bash
# Installs what Ferry's tests need on a fresh Debian machine, then runs every
# test (unit and end-to-end). The end-to-end tests start their own throwaway
# PostgreSQL clusters; they fail, never skip, when they cannot.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pg() {
  command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}
if ! need_pg; then
  echo "tests/run.sh: installing PostgreSQL server binaries" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q postgresql postgresql-contrib
fi
# Root runs PostgreSQL through `runuser -u postgres`: make sure that user exists.
if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
  useradd --system --home /var/lib/postgresql --shell /bin/bash postgres
fi

cargo test --workspace --locked "$@"
