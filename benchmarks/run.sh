#!/usr/bin/env bash
# Installs the load generator (Debian's wrk) and jemalloc, and runs a benchmark: ingestion
# (the default), `profiles` or `audiences`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null 2>&1 || ! ldconfig -p 2>/dev/null | grep -q libjemalloc; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq wrk libjemalloc2 >/dev/null
fi
[ -x .venv/bin/python ] || ./dev.sh test --co -q >/dev/null
if [ "${1:-}" = "audiences" ]; then
  shift
  exec .venv/bin/python benchmarks/bench_audiences.py "$@"
fi
if [ "${1:-}" = "profiles" ]; then
  shift
  exec .venv/bin/python benchmarks/bench_profiles.py "$@"
fi
exec .venv/bin/python benchmarks/bench_ingest.py "$@"
