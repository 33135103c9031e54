#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite: formatting, lints, unit
# tests, end-to-end tests (each in its own network namespace), the examples' schema check,
# and a final check that nothing was left behind on the host.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh

echo "== fmt"
cargo fmt --all -- --check
echo "== clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== build"
cargo build --workspace --all-targets
echo "== test tools"
# A real gRPC health server for the gRPC probe test, for the python3 containers find on their
# PATH (the system's, whatever the shell's PATH prefers).
cpath=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
if ! env PATH=$cpath python3 -c "import grpc, grpc_health.v1.health" 2>/dev/null; then
  env PATH=$cpath python3 -m pip install -q grpcio grpcio-health-checking 2>/dev/null ||
    env PATH=$cpath python3 -m pip install -q --break-system-packages grpcio grpcio-health-checking
fi
echo "== tests"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Each end-to-end test runs a whole cluster: at most three at once on a small machine.
RUST_TEST_THREADS=${RUST_TEST_THREADS:-3} cargo test --workspace 2>&1 | tee "$log"
passed=$(grep -o '[0-9]* passed' "$log" | awk '{s+=$1} END {print s+0}')
failed=$(grep -o '[0-9]* failed' "$log" | awk '{s+=$1} END {print s+0}')

echo "== examples against the upstream Kubernetes schemas"
if ! command -v kubernetes-validate >/dev/null; then
  python3 -m pip install -q kubernetes-validate 2>/dev/null || python3 -m pip install -q --break-system-packages kubernetes-validate
fi
kubernetes-validate --quiet -k 1.33.0 --strict examples/*.yaml

echo "== leak check"
left=$(ip netns list 2>/dev/null | awk '{print $1}' | grep '^skiff-t' || true)
procs=$(pgrep -a -f 'skiff-e2e-' | grep -v pgrep || true)
cgroups=$(find /sys/fs/cgroup -mindepth 2 -maxdepth 3 -type d -path '*/skiff/*' 2>/dev/null || true)
# The kubelets' favordynmods hierarchy (name=skiff) goes with the last of them.
dynmods=$(grep 'name=skiff' /proc/self/cgroup || true)
left="$left$cgroups$dynmods"
if [ -n "$left$procs" ]; then
  echo "tests left state behind:" >&2
  echo "$left" >&2
  echo "$procs" >&2
  exit 1
fi
echo "no leftover namespaces or processes"
echo "tests: $passed passed, $failed failed"
