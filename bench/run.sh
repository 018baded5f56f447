#!/usr/bin/env bash
# Runs podlet's benchmarks side by side with crun and runc (as root) and prints medians and ratios.
#   bench/run.sh [RUNS] [PODS]
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
bash hack/deps.sh
for p in crun runc; do command -v $p >/dev/null || { apt-get install -y -qq crun runc >/dev/null; break; }; done
cargo build --locked --release -p podlet -p podlet-cni >&2
python3 bench/bench.py --podlet target/release/podlet --runs "${1:-40}" --pods "${2:-50}"
python3 bench/cni.py --ours target/release --runs "${1:-40}"
python3 bench/apiserver.py --podlet target/release/podlet
python3 bench/cluster.py --podlet target/release/podlet
python3 bench/pull.py --podlet target/release/podlet
python3 bench/controllers.py --podlet target/release/podlet
python3 bench/overlay.py --podlet target/release/podlet
python3 bench/dns.py --podlet target/release/podlet
python3 bench/services.py --podlet target/release/podlet
python3 bench/scheduler.py --podlet target/release/podlet --nodes 5000 --pods 1000
