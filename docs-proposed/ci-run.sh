#!/usr/bin/env bash
# CI, on a fresh clone: start the servers that tests need (a throwaway
# PostgreSQL cluster on loopback), install the Node.js client the tests run
# (tests/node, from its package-lock.json), make the absence of either a
# failure rather than a skip, then run the README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/postgres-test-server)"
export SPINDLE_REQUIRE_POSTGRES=1
npm ci --prefix tests/node --no-audit --no-fund --loglevel=error
export SPINDLE_REQUIRE_NODE=1
exec scripts/test -q
