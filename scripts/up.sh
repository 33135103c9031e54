#!/usr/bin/env bash
# Installs what is missing, builds skiff, and starts the cluster in the foreground.
# Extra arguments go to `skiff up` (for example --data-dir, --api-port).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
cargo build --release --workspace --bins
exec ./target/release/skiff up "$@"
