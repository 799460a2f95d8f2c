#!/usr/bin/env bash
# The two commands of the quick start, each setting up what it needs first:
#   ./dev.sh demo [cdp demo options]   a simulated shop end to end on the embedded engines
#   ./dev.sh test [pytest options]     lint, types and the whole test suite
set -euo pipefail
cd "$(dirname "$0")"

python_311() {
  for candidate in python3.11 python3 python; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      echo "$candidate"
      return
    fi
  done
  echo "Python 3.11 or newer is needed" >&2
  exit 1
}

# The install is editable, so only a change of the declared packages calls for another:
# skipped when pyproject.toml and the extras are what the last install had.
setup_python() {
  local extras="$1"
  if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv"
    "$(python_311)" -m venv .venv
  fi
  local stamp=".venv/.cdp-installed${extras:+-$extras}"
  local wanted
  wanted="$(cat pyproject.toml; echo "$extras")"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
    return
  fi
  echo "==> installing the project${extras:+ with $extras}"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet --editable ".${extras:+[$extras]}"
  printf '%s' "$wanted" >"$stamp"
}

apt_install() {
  echo "==> installing $1 (Debian package)"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  # shellcheck disable=SC2086 # a list of packages
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $1 >/dev/null
}

# Browser tests drive Debian's Chromium; nothing downloads a browser of its own.
setup_browser() {
  command -v chromium >/dev/null 2>&1 || apt_install chromium
}

# The official browser SDKs for the end-to-end tests, as pinned in tests/browser.
setup_browser_sdks() {
  command -v npm >/dev/null 2>&1 || apt_install "nodejs npm"
  if [ ! -f tests/browser/node_modules/.package-lock.json ] ||
    [ tests/browser/package-lock.json -nt tests/browser/node_modules/.package-lock.json ]; then
    echo "==> installing the browser SDKs (npm)"
    npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
  fi
}

# The embedded Valkey runs with jemalloc when it is installed (cdp/redis_server.py): the
# wheel's server is built with glibc malloc, slower for the profile scripts. Optional for
# the demo (it runs without), wanted for the tests and benchmarks.
setup_jemalloc() {
  ldconfig -p 2>/dev/null | grep -q libjemalloc || apt_install libjemalloc2
}

command="${1:-}"
shift || true
case "$command" in
  demo)
    setup_python ""
    setup_jemalloc || echo "==> jemalloc not installed: the embedded Valkey uses glibc malloc"
    exec .venv/bin/cdp demo "$@"
    ;;
  test)
    setup_python "test"
    setup_browser
    setup_browser_sdks
    setup_jemalloc
    echo "==> ruff"
    .venv/bin/ruff check .
    .venv/bin/ruff format --check .
    echo "==> mypy"
    .venv/bin/mypy cdp ingestion rules activation benchmarks
    echo "==> pytest"
    exec .venv/bin/pytest "$@"
    ;;
  *)
    echo "usage: ./dev.sh demo|test [options]" >&2
    exit 2
    ;;
esac
