#!/usr/bin/env bash
# The whole test suite: unit tests and the privileged end-to-end tests (run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || [ "${PODLET_SKIP_PRIVILEGED:-}" = 1 ] || { echo "run as root (the end-to-end tests create namespaces, mounts and cgroups)" >&2; exit 1; }
bash hack/deps.sh
cargo build --locked -p podlet -p podlet-cni
cargo test --locked --workspace --no-fail-fast
