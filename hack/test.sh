#!/usr/bin/env bash
# The whole test suite: unit tests and the privileged end-to-end tests (run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || [ "${PODLET_SKIP_PRIVILEGED:-}" = 1 ] || { echo "run as root (the end-to-end tests create namespaces, mounts and cgroups)" >&2; exit 1; }
bash hack/deps.sh
bash hack/lab-deps.sh
# The Vagrant lab's box (vagrant/box.sh: ~4 min the first time, mostly downloads) is built
# while cargo compiles; the lab's test waits for it.
mkdir -p target
bash vagrant/box.sh >target/box.log 2>&1 &
box=$!
cargo build --locked -p podlet -p podlet-cni
wait $box || echo "vagrant/box.sh failed (target/box.log); the Vagrant lab test will try again" >&2
cargo test --locked --workspace --no-fail-fast
