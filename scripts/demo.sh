#!/usr/bin/env bash
# scripts/demo.sh - the main job: bootstrap (idempotent), then the end-to-end streaming demo (`python -m devtools.demo`).
#
#   bash scripts/demo.sh [demo options]       # options go to devtools.demo
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# Only what the demo runs: the venv, the Kafka and s3proxy jars, Redis (no test tools: Go builds, Chromium, etcd).
DDAD_SETUP=demo
# shellcheck source=scripts/bootstrap.sh
source scripts/bootstrap.sh

exec "$PY" -m devtools.demo "$@"
