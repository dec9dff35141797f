#!/usr/bin/env bash
# scripts/test.sh - the whole test suite, real servers included: bootstrap (idempotent), then pytest.
#
#   bash scripts/test.sh                      # everything under tests/ (integration tests are part of the default run)
#   bash scripts/test.sh tests/integration -x # extra arguments go to pytest
#
# Exits non-zero on any failure or error, and when pytest collects no test at all (its exit code 5).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# Everything the tests need: what the demo runs plus the test tools (helm, kubeconform, promtool, kube-apiserver,
# Chromium, etcd).
DDAD_SETUP=test
# shellcheck source=scripts/bootstrap.sh
source scripts/bootstrap.sh

rc=0
"$PY" -m pytest "$@" || rc=$?
case "$rc" in
    0) ;;
    5) echo "test.sh: pytest collected no tests (exit 5): treating that as a failure" >&2 ;;
    *) echo "test.sh: pytest failed (exit $rc)" >&2 ;;
esac
exit "$rc"
