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

# The MongoDB source's end-to-end tests run against SecantusDB, a
# MongoDB-wire-protocol server from PyPI (no mongod can be installed here),
# in a venv of the project's own. tests/support/mongo.rs looks for it there.
SECANTUSD=target/secantus-venv/bin/secantusd-py
if [ ! -x "$SECANTUSD" ]; then
  echo "tests/run.sh: installing SecantusDB into target/secantus-venv" >&2
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q python3-venv
  fi
  python3 -m venv target/secantus-venv
  target/secantus-venv/bin/pip install -q SecantusDB
fi

# No doctests (there are none): every target's tests, then one closing
# line that sums them up.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --all-targets --locked "$@" 2>&1 | tee "$log"
awk '/^test result:/ { p += $4; f += $6 } END { printf "%d passed, %d failed\n", p, f }' "$log"
