#!/usr/bin/env bash
# One command from a fresh clone to a working derm: virtualenv, pinned install, a reachable
# Redis, `feast apply`, then the demo job on generated data.
#   bash scripts/setup.sh              # everything, ends with `derm demo`
#   bash scripts/setup.sh --no-demo    # install + Redis + feast apply only (used by tests/CI)
#   bash scripts/setup.sh --no-demo --with-chromium   # and Debian's chromium (CI: report test)
set -euo pipefail
cd "$(dirname "$0")/.."

RUN_DEMO=1
WITH_CHROMIUM=0
for arg in "$@"; do
  case "$arg" in
    --no-demo) RUN_DEMO=0 ;;
    --with-chromium) WITH_CHROMIUM=1 ;;
    -h|--help) sed -n 2,6p "$0"; exit 0 ;;
    *) echo "setup.sh: unknown flag '$arg' (known: --no-demo, --with-chromium, --help)" >&2; exit 2 ;;
  esac
done

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "setup.sh: derm needs Python 3.11 (found $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi

# 1. Virtualenv + pinned install. Re-runs are instant: the stamp holds the lock's hash.
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
STAMP=.venv/.derm-installed
WANT="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "==> installing pinned dependencies into .venv (about 2 minutes the first time)"
  # pip warns about every local index path it does not find, and setuptools that an editable
  # install lets same-named folders of the working directory shadow the package (here they
  # are the package): noise, filtered out.
  quiet_pip() {
    PYTHONWARNINGS="ignore:Editable installation" .venv/bin/python -m pip "$@" 2>&1 |
      { grep -v "^WARNING: Location" || true; }
  }
  quiet_pip install --quiet --upgrade pip
  # torch==2.13.0 resolves to the CPU build when it is available locally (see README).
  quiet_pip install --quiet -c constraints.txt -e ".[dev]"
  echo "$WANT" > "$STAMP"
fi
export PATH="$PWD/.venv/bin:$PATH"

# 2. A reachable Redis at REDIS_URL (default redis://127.0.0.1:6379).
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
export REDIS_URL
redis_ok() { python -m derm_features.feast.redis_url ping >/dev/null 2>&1; }
if ! redis_ok; then
  read -r HOST PORT < <(python -m derm_features.feast.redis_url hostport)
  if [ "$HOST" != "127.0.0.1" ] && [ "$HOST" != "localhost" ]; then
    echo "setup.sh: no Redis answers at $(python -m derm_features.feast.redis_url redacted); it is not local, so start it there or point REDIS_URL at a running Redis." >&2
    exit 1
  fi
  if ! command -v redis-server >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing redis-server from Debian packages"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  fi
  if command -v redis-server >/dev/null 2>&1; then
    echo "==> starting a local redis-server on port $PORT"
    redis-server --daemonize yes --bind 127.0.0.1 --port "$PORT" --save "" --appendonly no >/dev/null
    for _ in $(seq 1 50); do redis_ok && break; sleep 0.1; done
  fi
  if ! redis_ok; then
    echo "setup.sh: no Redis answers at $(python -m derm_features.feast.redis_url redacted) and none could be started here." >&2
    echo "  Start one with:  redis-server --daemonize yes --port $PORT --save ''" >&2
    echo "  or with Docker:  docker run -d -p $PORT:6379 redis:7" >&2
    echo "  or point REDIS_URL at a running Redis, e.g. REDIS_URL=redis://host:6379/0" >&2
    exit 1
  fi
fi
echo "==> Redis is up at $(python -m derm_features.feast.redis_url redacted)"

# 2b. Headless Chromium for the test that renders `derm report` (skipped without it): a
# Debian package (about a minute on a fresh machine), so only as root with apt-get, and a
# failure only warns.
if [ "$WITH_CHROMIUM" = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing chromium from Debian packages (headless report test)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
      || echo "setup.sh: chromium could not be installed; the headless report test will be skipped" >&2
  else
    echo "setup.sh: --with-chromium needs root and apt-get; the headless report test will be skipped" >&2
  fi
fi

# 3. Register the DERM entities, views and services with Feast.
export DERM_WORKDIR="${DERM_WORKDIR:-$PWD/data}"
mkdir -p "$DERM_WORKDIR"
echo "==> derm apply: the spec's Feast objects (workdir $DERM_WORKDIR)"
derm apply --workdir "$DERM_WORKDIR"

# 4. The main job on the embedded default.
if [ "$RUN_DEMO" = 1 ]; then
  echo "==> derm demo"
  derm demo --workdir "$DERM_WORKDIR"
fi
